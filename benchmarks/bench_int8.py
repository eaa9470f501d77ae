"""int8 vs fp32 in onnxruntime on three model families, and mcomp's static defaults vs ORT's.

    python benchmarks/bench_int8.py [--threads 1] [--out benchmarks/RESULTS.md]

Models (random weights and inputs, seeded; the figures are about speed and numerical error,
not task accuracy): a small ResNet-style CNN on 3x32x32, an MLP, and a 2-layer transformer
encoder. Each is exported to fp32 ONNX with mcomp's exporter, quantized by mcomp's quantize
stage (CNN/MLP: the default static U8S8 QDQ; transformer: `mode: dynamic`), and the CNN also by
plain `onnxruntime.quantization.quantize_static` with ORT's defaults (QDQ, S8S8, per-tensor,
MinMax, no pre-processing) on the same calibration data. Every session uses the same options
(mcomp.ort_session.create_session) and is timed in its own block. The section it prints
replaces `## int8 vs fp32` in the results file, or is appended.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HEADING = "## int8 vs fp32"


def build_models():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    torch.manual_seed(0)
    resnet = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                           Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    mlp = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                        nn.Linear(1024, 10))
    layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return [("resnet-ish CNN", resnet.eval(), [3, 32, 32], "static"),
            ("MLP 512-1024-1024-10", mlp.eval(), [512], "static"),
            ("transformer encoder (2x d128, seq 32)", encoder.eval(), [32, 128], "dynamic")]


def mcomp_quantize(fp32, calib: np.ndarray, mode: str, workdir: Path, threads: int):
    from mcomp.compressors.quantize import QuantizeOptions, QuantizeStage
    from mcomp.data_io import Datasets, Split
    from mcomp.model_state import ModelState
    from mcomp.progress import NullProgress
    from mcomp.recipe import InputSpec
    from mcomp.stage import StageContext

    split = Split("calibration", {"x": calib}, None)
    state = ModelState.from_onnx(fp32, [InputSpec(name="x", shape=list(calib.shape[1:]))])
    ctx = StageContext(datasets=Datasets(None, split, split), seed=0, threads=threads,
                       metric=None, task=None, batch_size=32, original=state, workdir=workdir,
                       progress=NullProgress())
    stage = QuantizeStage(QuantizeOptions(mode=mode))
    return stage.run(state, ctx).onnx_model, stage.details


def plain_ort_quantize(fp32, calib: np.ndarray, workdir: Path):
    import onnx
    from onnxruntime.quantization import quantize_static

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{"x": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    source, target = workdir / "plain_fp32.onnx", workdir / "plain_int8.onnx"
    onnx.save(fp32, source)
    cwd = os.getcwd()
    os.chdir(workdir)  # ORT writes helper files into the current directory
    try:
        quantize_static(str(source), str(target), Reader())  # every option at ORT's default
    finally:
        os.chdir(cwd)
    return onnx.load(str(target))


def measure(fp32_bytes: bytes, variants: dict[str, bytes], x: np.ndarray, threads: int):
    from mcomp.ort_session import batch_feed, create_session, time_session

    rows = {}
    reference = create_session(fp32_bytes, threads).run(None, {"x": x[:64]})[0]
    for label, model_bytes in {"fp32": fp32_bytes, **variants}.items():
        session = create_session(model_bytes, threads)
        out = session.run(None, {"x": x[:64]})[0]
        times = {}
        for batch, runs in ((1, 40), (64, 10)):
            times[batch] = time_session(session, batch_feed({"x": x}, batch), warmup=3, runs=runs)
            time.sleep(0.1)
        rel = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        rows[label] = {"bytes": len(model_bytes), "b1": times[1], "b64": times[64], "rel": rel}
        del session
        time.sleep(0.2)
    return rows


def run(threads: int) -> tuple[list[str], list[str]]:
    from mcomp.convert import torch_to_onnx
    from mcomp.model_state import ModelState
    from mcomp.recipe import InputSpec

    lines = ["| model | variant | size KiB | b1 ms | b64 ms | fp32/int8 b1 | fp32/int8 b64 | "
             "rel. L2 error | int8 MACs share |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    rng = np.random.default_rng(0)
    for name, module, shape, mode in build_models():
        state = ModelState.from_torch(module, [InputSpec(name="x", shape=shape)])
        fp32 = torch_to_onnx(state)
        calib = rng.normal(size=(128, *shape)).astype(np.float32)
        x = rng.normal(size=(64, *shape)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            int8, details = mcomp_quantize(fp32, calib, mode, Path(tmp), threads)
            variants = {f"mcomp {mode}": int8.SerializeToString()}
            shares = {f"mcomp {mode}": details["int8_macs_share"]}
            if mode == "static" and "CNN" in name:
                plain = plain_ort_quantize(fp32, calib, Path(tmp))
                variants["plain quantize_static (ORT defaults)"] = plain.SerializeToString()
                shares["plain quantize_static (ORT defaults)"] = _share(plain, threads, tmp)
            rows = measure(fp32.SerializeToString(), variants, x, threads)
        base = rows["fp32"]
        for label, row in rows.items():
            lines.append(
                f"| {name} | {label} | {row['bytes'] / 1024:.0f} | {row['b1']:.3f} | "
                f"{row['b64']:.2f} | {base['b1'] / row['b1']:.2f} | {base['b64'] / row['b64']:.2f}"
                f" | {row['rel']:.2e} | {shares.get(label, '-')} |")
        notes.append(f"{name}: int8 compute nodes {details['int8_compute_nodes']}, float "
                     f"compute nodes {details['float_compute_nodes']}")
    return lines, notes


def _share(model, threads: int, tmp: str) -> float:
    from mcomp.compressors.int8_check import count_compute_nodes, save_optimized_graph

    optimized = save_optimized_graph(model.SerializeToString(), Path(tmp) / "plain.opt.onnx",
                                     threads)
    return count_compute_nodes(optimized, [model])["int8_macs_share"]


def section(threads: int, lines: list[str], notes: list[str], load: tuple) -> str:
    import onnxruntime
    import torch

    from mcomp.cpu_features import cpu_features

    command = f"/work/venv/bin/python benchmarks/bench_int8.py --threads {threads}"
    head = [HEADING, "", f"- Command: `{command}`",
            f"- Date: {datetime.datetime.now(datetime.timezone.utc):%a %b %d %H:%M:%S UTC %Y}",
            f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; ISA: "
            f"{', '.join(cpu_features())}; threads {threads}",
            f"- Load average (1 min) start {load[0]:.2f}, end {os.getloadavg()[0]:.2f} "
            "(shared machine: absolute ms are noisy, compare ratios within a row group)",
            f"- python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}", "",
            "fp32/int8 > 1 means int8 is faster. Relative L2 error: ||y_int8 - y_fp32|| / "
            "||y_fp32|| on 64 random inputs (random weights, calibration on 128 other random "
            "inputs). int8 MACs share: from the graph onnxruntime runs "
            "(mcomp.compressors.int8_check).", ""]
    return "\n".join(head + lines + [""] + [f"- {n}" for n in notes]) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(HEADING + "\n")
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(HEADING))
    rest = "" if end < 0 else old[end + 1:]
    path.write_text(old[:start] + text + ("\n" + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    lines, notes = run(args.threads)
    text = section(args.threads, lines, notes, load)
    sys.stdout.write(text)
    write_section(args.out, text)


if __name__ == "__main__":
    main()
