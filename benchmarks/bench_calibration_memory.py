"""Peak memory of static calibration as the number of calibration samples grows.

    python benchmarks/bench_calibration_memory.py [--samples 128,512] [--method percentile]

onnxruntime's calibrators keep every batch's activations until `collect_data` returns (the
histogram calibrators, percentile and entropy, keep whole tensors). mcomp's CalibrationReader
hands them over in chunks of at most 8 batches (ORT's strided collection), so memory should
stay flat in the number of samples. Each cell is one fresh subprocess quantizing the
benchmark's ResNet-style CNN (bench_int8.py, 3x32x32, random weights and inputs, batch 32)
with mcomp's quantize stage; `chunked` is mcomp as shipped, `whole` the same code with the
whole split in one chunk (what onnxruntime does by itself). The figure is the child's peak RSS
(ru_maxrss). The section replaces `## Calibration memory` in the results file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from results_file import update_results  # benchmarks/ is the script's folder

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Calibration memory"
CHILD = """
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, {bench!r})
import numpy as np, torch
torch.set_num_threads(1)
import bench_int8
from mcomp.compressors.quantize import calibration_reader
from mcomp.model.convert import torch_to_onnx
from mcomp.model.state import ModelState
from mcomp.recipe.schema import InputSpec

samples, method, chunked = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "chunked"
if not chunked:  # one chunk holding every batch: onnxruntime's own behaviour
    calibration_reader.CalibrationReader.stride = lambda self: self.batch_count
name, module, shape, _ = bench_int8.build_models()[0]
fp32 = torch_to_onnx(ModelState.from_torch(module, [InputSpec(name="x", shape=shape)]))
calib = np.random.default_rng(0).normal(size=(samples, *shape)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    bench_int8.mcomp_quantize(fp32, calib, "static", Path(tmp), 1,
                              calibration={{"method": method}})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_mib": before / 1024, "peak_mib": peak / 1024}}))
"""


def measure(samples: int, method: str, mode: str) -> dict:
    script = CHILD.format(bench=str(REPO / "benchmarks"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(samples), method, mode],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="256,1024")
    parser.add_argument(
        "--method", default="percentile", choices=["minmax", "percentile", "entropy"]
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    counts = [int(s) for s in args.samples.split(",")]
    rows = {
        (n, mode): measure(n, args.method, mode) for n in counts for mode in ("chunked", "whole")
    }
    lines = [
        HEADING,
        "",
        f"- Command: `python benchmarks/bench_calibration_memory.py --samples "
        f"{args.samples} --method {args.method}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%a %b %d %H:%M:%S UTC %Y}",
        "- Model: bench_int8's ResNet-style CNN, 3x32x32, calibration batch 32 (a chunk "
        "is at most 8 batches = 256 samples); peak RSS of a fresh process per cell",
        "",
        "| samples | chunked (mcomp) peak MiB | whole split (ORT alone) peak MiB | "
        "whole / chunked |",
        "|---|---|---|---|",
    ]
    for n in counts:
        chunked, whole = rows[(n, "chunked")]["peak_mib"], rows[(n, "whole")]["peak_mib"]
        lines.append(f"| {n} | {chunked:.0f} | {whole:.0f} | {whole / chunked:.2f}x |")
    first, last = counts[0], counts[-1]
    growth = rows[(last, "chunked")]["peak_mib"] - rows[(first, "chunked")]["peak_mib"]
    whole_growth = rows[(last, "whole")]["peak_mib"] - rows[(first, "whole")]["peak_mib"]
    lines += [
        "",
        f"- From {first} to {last} samples, peak memory grew by {growth:.0f} MiB "
        f"chunked and {whole_growth:.0f} MiB with the whole split in one collection.",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    update_results(args.out, text)


if __name__ == "__main__":
    main()
