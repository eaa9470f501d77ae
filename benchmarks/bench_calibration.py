"""Static int8 calibration methods side by side: minmax, percentile, entropy and auto.

    python benchmarks/bench_calibration.py [--threads 1] [--out benchmarks/RESULTS.md]

The static models of bench_int8.py (the bundled trained digits ResNet with its held-out
labels, the small ResNet-style CNN, the MLP, ResNet-18 for 3x32x32), each quantized by mcomp's
quantize stage with `calibration.method` minmax, percentile (99.999), entropy (KL-divergence
thresholds over 2048-bin histograms, `compressors/calibration_entropy.py`) and auto (the
default: minmax or percentile, whichever is closer to fp32 on the calibration samples), on the
same 128 calibration samples. Reported: relative L2 output error vs fp32 and top-1 agreement
on 512 evaluation inputs (accuracy against the labels for the digits model), and the seconds
the quantize stage took (calibration, quantization and its int8 checks). The section it
prints replaces `## Calibration methods` in the results file, or is appended.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_int8 import build_models, mcomp_quantize, model_data  # benchmarks/ is on sys.path
from results_file import update_results

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Calibration methods"
METHODS = ("minmax", "percentile", "entropy", "auto")
EVAL_SAMPLES = 512


def rows(threads: int) -> list[str]:
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    out = [
        "| model | method | rel. L2 error | top-1 agree | accuracy (labels) | quantize s |"
        " auto chose |",
        "|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for name, module, shape, mode in build_models():
        if mode != "static":
            continue
        fp32 = torch_to_onnx(ModelState.from_torch(module, [InputSpec(name="x", shape=shape)]))
        calib, _, evaluation, labels = model_data(name, shape, rng)
        evaluation = evaluation[:EVAL_SAMPLES]
        labels = labels[:EVAL_SAMPLES] if labels is not None else None
        reference = outputs(fp32, evaluation, threads)
        for method in METHODS:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                int8, details = mcomp_quantize(
                    fp32, calib, "static", Path(tmp), threads, calibration={"method": method}
                )
                seconds = time.perf_counter() - started
            got = outputs(int8, evaluation, threads)
            error = np.linalg.norm(got - reference) / np.linalg.norm(reference)
            agree = np.mean(got.argmax(axis=1) == reference.argmax(axis=1))
            accuracy = "-" if labels is None else f"{np.mean(got.argmax(axis=1) == labels):.4f}"
            chose = details["calibration"]["method"] if method == "auto" else ""
            out.append(
                f"| {name} | {method} | {error:.3e} | {agree:.3f} | {accuracy} | "
                f"{seconds:.1f} | {chose} |"
            )
    return out


def outputs(model, evaluation: np.ndarray, threads: int) -> np.ndarray:
    from mcomp.measure.ort_session import create_session

    session = create_session(model.SerializeToString(), threads)
    return np.concatenate(
        [session.run(None, {"x": evaluation[i : i + 64]})[0] for i in range(0, len(evaluation), 64)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    table = rows(args.threads)
    section = "\n".join(
        [
            HEADING,
            "",
            f"- Command: `python benchmarks/bench_calibration.py --threads {args.threads}`",
            f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
            f"{os.cpu_count()} CPUs; onnxruntime {onnxruntime.__version__}",
            "",
            "Same 128 calibration samples per model; error and top-1 agreement vs fp32 on "
            f"{EVAL_SAMPLES} evaluation inputs (the digits model: held-out digits, with accuracy "
            "against their labels). `quantize s`: the whole quantize stage, int8 checks included.",
            "",
            *table,
            "",
        ]
    )
    print(section)
    update_results(args.out, section)


if __name__ == "__main__":
    main()
