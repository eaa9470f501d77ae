"""Finetune throughput (samples/s) in 1 process vs 2 processes under torchrun (gloo, CPU).

    python benchmarks/bench_distributed.py [--epochs 6] [--out benchmarks/RESULTS.md]

Both runs use the same recipe (the digits CNN, finetune only) and one intra-op thread per
process, so the 2-process run uses two cores where the 1-process run uses one. Throughput is
epochs x train samples / the finetune stage's seconds from each run's report.
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

from results_file import update_results  # benchmarks/ is the script's folder

HERE = Path(__file__).resolve().parent
RECIPE = """\
model: {builtin: digits_cnn}
data: {train: digits, eval: digits}
runtime: {threads: 1, latency: {enabled: false}}
stages:
  - finetune: {epochs: %d, batch_size: 32}
"""
TRAIN_SAMPLES = 1437


def run(folder: Path, procs: int) -> dict:
    env = {**os.environ, "MCOMP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    args = ["-m", "mcomp", "run", "recipe.yaml", "--out", f"out{procs}", "--quiet"]
    if procs > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), *args]
    result = subprocess.run(
        [sys.executable, *args], cwd=folder, capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads((folder / f"out{procs}" / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "recipe.yaml").write_text(RECIPE % args.epochs)
        for procs in (1, 2):
            report = run(folder, procs)
            stage = report["stages"][0]
            rows.append(
                (
                    procs,
                    stage["seconds"],
                    args.epochs * TRAIN_SAMPLES / stage["seconds"],
                    stage["metrics"]["metric"],
                )
            )
    heading = "## Distributed finetune throughput"
    lines = [
        heading,
        "",
        f"- Command: `python benchmarks/bench_distributed.py --epochs {args.epochs}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} CPUs; load average at end "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        "",
        "| processes | finetune s | samples/s | vs 1 process | final accuracy |",
        "|---|---|---|---|---|",
    ]
    for procs, seconds, throughput, metric in rows:
        lines.append(
            f"| {procs} | {seconds:.2f} | {throughput:.0f} | "
            f"{throughput / rows[0][2]:.2f}x | {metric:.4f} |"
        )
    lines += [
        "",
        "Each process runs one intra-op thread; under torchrun each rank trains its "
        "shard with DistributedDataParallel (gloo all-reduce of the gradients) and the "
        "eval split is predicted in shards and gathered.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    update_results(args.out, section)


if __name__ == "__main__":
    main()
