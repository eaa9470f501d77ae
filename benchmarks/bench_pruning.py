"""Pruning benchmarks: structured channel pruning on a residual CNN, gradual unstructured
pruning on the digits CNN. Figures go to benchmarks/RESULTS.md.

    python benchmarks/bench_pruning.py [--threads 1] [--out benchmarks/RESULTS.md]

Targets (issue: pruning that makes models really smaller and faster):
- ResNet (3x32x32, BatchNorm, residuals), 50 % channel pruning + finetune: >= 2x fewer MACs,
  >= 1.8x lower onnxruntime fp32 latency at batch 64, accuracy drop <= 1.5 points.
- digits CNN, 90 % unstructured sparsity with gradual (AGP) pruning: within 1 point.
Latency ratios come from one `mcomp run`, baseline and pruned model timed in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import update_results  # benchmarks/ is the script's folder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RESNET_RECIPE = """\
model: {path: resnet.pt, factory: "resnet32:resnet32", python_path: ["%s"]}
data: {train: train.npz, eval: eval.npz, batch_size: 64}
runtime: {latency: {batch: 64, warmup: 5, runs: 30}}
stages:
  - prune: {method: channel, sparsity: 0.5, importance: l1, scope: layer, round_to: 8}
  - finetune: {epochs: 6, lr: 0.001, schedule: cosine}
constraints: {max_accuracy_drop: 0.015}
"""

GRADUAL_RECIPE = """\
model: {builtin: digits_cnn}
data: {train: digits, eval: digits}
runtime: {latency: {batch: 64}}
stages:
  - prune: {sparsity: 0.9, gradual: {steps: 8, epochs: 12, lr: 0.002}}
constraints: {max_accuracy_drop: 0.01}
"""


def train_resnet(folder: Path, epochs: int) -> None:
    """Train the benchmark ResNet briefly on digits at 32x32 and save its state_dict."""
    import torch
    from resnet32 import digits32, resnet32

    x, y = digits32("train")
    ex, ey = digits32("eval")
    np.savez(folder / "train.npz", x=x, y=y)
    np.savez(folder / "eval.npz", x=ex, y=ey)
    model = resnet32()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(xt), generator=generator).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[index]), yt[index]).backward()
            optimizer.step()
    torch.save(model.eval().state_dict(), folder / "resnet.pt")


def run_recipe(folder: Path, text: str, threads: int) -> dict:
    recipe = folder / "recipe.yaml"
    recipe.write_text(text)
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcomp",
            "run",
            str(recipe),
            "--quiet",
            "--json",
            "--out",
            str(folder / "out"),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    if result.returncode not in (0, 1):
        raise SystemExit(result.stderr)
    report = json.loads(result.stdout)
    report["wall_s"] = time.perf_counter() - start
    report["exit_code"] = result.returncode
    return report


def summarize(name: str, report: dict) -> list[str]:
    base, final = report["baseline"]["metrics"], report["final"]["metrics"]
    delta = report["final"]["delta"]
    return [
        f"### {name}",
        "",
        "| | baseline | after | ratio / delta |",
        "|---|---|---|---|",
        f"| params | {base['params']:,} | {final['params']:,} | {delta['params_ratio']}x |",
        f"| non-zero params | {base['nonzero_params']:,} | {final['nonzero_params']:,} | "
        f"{base['nonzero_params'] / final['nonzero_params']:.2f}x |",
        f"| MACs | {base['macs']:,} | {final['macs']:,} | {delta['macs_ratio']}x |",
        f"| ONNX size, bytes | {base['size_bytes']:,} | {final['size_bytes']:,} | "
        f"{delta['size_ratio']}x |",
        f"| compressed, bytes | {base['size_compressed_bytes']:,} | "
        f"{final['size_compressed_bytes']:,} | {delta['size_compressed_ratio']}x |",
        f"| ORT fp32 latency b1, ms | {base['latency_ms_b1']} | {final['latency_ms_b1']} | "
        f"{delta['speedup_b1']}x faster |",
        f"| ORT fp32 latency b{base['latency_batch']}, ms | {base['latency_ms_batch']} | "
        f"{final['latency_ms_batch']} | {delta['speedup_batch']}x faster |",
        f"| accuracy | {base['metric']:.4f} | {final['metric']:.4f} | "
        f"{(final['metric'] - base['metric']) * 100:+.2f} points |",
        f"| `mcomp run` exit code, wall s | | | {report['exit_code']}, {report['wall_s']:.1f} |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    os.environ["MCOMP_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train_resnet(folder, args.train_epochs)
        resnet = run_recipe(folder, RESNET_RECIPE % HERE, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        gradual = run_recipe(Path(tmp), GRADUAL_RECIPE, args.threads)
    command = f"python benchmarks/bench_pruning.py --threads {args.threads}"
    lines = [
        f"## Pruning (threads={args.threads})",
        "",
        f"- Command: `{command}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- CPU ISA: {', '.join(resnet['environment']['cpu_isa'])}; load average at end: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        "",
    ]
    lines += summarize(
        "ResNet 3x32x32 (digits upsampled): 50 % channel pruning (round_to 8) + 6 epochs finetune",
        resnet,
    )
    lines += summarize("digits CNN: 90 % unstructured, gradual AGP (8 steps, 12 epochs)", gradual)
    section = "\n".join(lines)
    print(section)
    update_results(args.out, section)


if __name__ == "__main__":
    main()
