"""Benchmark distillation, low-rank factorization and weight sharing on the bundled digits.

Usage (from the repository root):

    python benchmarks/bench_distill_lowrank_cluster.py [--threads N] [--out benchmarks/RESULTS.md]

Runs four experiments through mcomp's real pipeline (in-process, latency timing off), all on
the bundled digits CNN (38k parameters) and the bundled digits data (1437 train / 360 eval):

1. a half-width student (digits_cnn(width=8)) distilled from the original for E epochs (two
   temperature/alpha settings), against
   the same student, same initialisation and epochs, trained on labels only (alpha = 0);
2. lowrank of every Linear layer to 50 % of its parameters (`params_ratio: 0.5`), then finetune,
   and the same for the hidden Linear alone (the output layer kept);
3. 16-cluster weight sharing of every Conv/Linear layer, no finetuning;
4. the full chain prune 70 % -> distill -> cluster 16 -> static int8 -> export
   (recipes/prune_distill_cluster.yaml).

It prints a Markdown section and replaces the section `## Distillation, low-rank, clustering`
of the results file (or appends it). Accuracy figures are deterministic for a machine (seeded).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Distillation, low-rank, clustering"
STUDENT = {"factory": "mcomp.models.digits_cnn:digits_cnn", "factory_args": {"width": 8}}
EPOCHS = 8


def recipe(stages: list[dict], threads: int) -> dict[str, Any]:
    return {"version": 1, "seed": 0, "model": {"builtin": "digits_cnn"},
            "data": {"train": "digits", "eval": "digits"},
            "runtime": {"threads": threads, "latency": {"enabled": False}}, "stages": stages}


def run(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run one recipe through the pipeline; the report."""
    from mcomp.pipeline import RunOptions, run_pipeline
    from mcomp.progress import NullProgress
    from mcomp.recipe_load import load_recipe

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return run_pipeline(load_recipe(str(path)), RunOptions(out_dir=folder / "out"),
                        NullProgress()).report


def experiments(scratch: Path, threads: int) -> dict[str, dict[str, Any]]:
    distill = {"student": STUDENT, "epochs": EPOCHS, "lr": 0.003, "temperature": 4.0}
    chain = yaml.safe_load((REPO / "recipes" / "prune_distill_cluster.yaml").read_text())
    chain["runtime"] = {"threads": threads, "latency": {"enabled": False}}
    chain.pop("constraints", None)
    plans = {
        "distilled": recipe([{"distill": {**distill, "alpha": 0.9}}], threads),
        "distilled_t2": recipe([{"distill": {**distill, "alpha": 0.5, "temperature": 2.0}}],
                               threads),
        "scratch": recipe([{"distill": {**distill, "alpha": 0.0}}], threads),
        "lowrank": recipe([{"lowrank": {"params_ratio": 0.5, "layer_types": ["Linear"]}},
                           {"finetune": {"epochs": 3}}], threads),
        "lowrank_hidden": recipe([{"lowrank": {"params_ratio": 0.5, "include": ["6"]}},
                                  {"finetune": {"epochs": 3}}], threads),
        "cluster": recipe([{"cluster": {"clusters": 16}}], threads),
        "chain": chain,
    }
    reports = {}
    for name, data in plans.items():
        print(f"running {name}", file=sys.stderr)
        reports[name] = run(data, scratch / name)
    return reports


def pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def render(reports: dict[str, dict[str, Any]], command: str, date: str) -> str:
    base = reports["cluster"]["baseline"]["metrics"]
    acc = base["metric"]
    env = reports["cluster"]["environment"]
    distilled, distilled_t2, scratch = (reports[k]["stages"][0] for k in
                                        ("distilled", "distilled_t2", "scratch"))
    lowrank, finetune = reports["lowrank"]["stages"]
    hidden, hidden_ft = reports["lowrank_hidden"]["stages"]
    cluster = reports["cluster"]["stages"][0]
    chain_final = reports["chain"]["stages"][-1]["metrics"]
    chain_names = " → ".join(s["name"] for s in reports["chain"]["stages"])
    lr_details = lowrank["details"]
    lines = [
        HEADING, "",
        f"- Command: `{command}`",
        f"- Date: {date}",
        f"- mcomp {reports['cluster']['mcomp_version']}, torch {env['torch']}, onnxruntime "
        f"{env['onnxruntime']}, threads {env['threads']}; digits CNN baseline: "
        f"{base['params']:,} params, accuracy {pct(acc)} on the 360 eval samples",
        "",
        "| experiment | accuracy | vs baseline | params | compressed size (deflate) | "
        "compressed ratio vs fp32 |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, metrics: dict[str, Any]) -> str:
        ratio = base["size_compressed_bytes"] / metrics["size_compressed_bytes"]
        return (f"| {label} | {pct(metrics['metric'])} | {(metrics['metric'] - acc) * 100:+.2f} "
                f"points | {metrics['params']:,} | {metrics['size_compressed_bytes']:,} B | "
                f"{ratio:.2f}x |")

    lines += [
        row("baseline (fp32)", base),
        row(f"half-width student, distilled (T=4, alpha=0.9, {EPOCHS} epochs)",
            distilled["metrics"]),
        row(f"half-width student, distilled (T=2, alpha=0.5, {EPOCHS} epochs)",
            distilled_t2["metrics"]),
        row(f"half-width student, labels only (alpha=0, same init and {EPOCHS} epochs)",
            scratch["metrics"]),
        row("lowrank Linear layers to 50 % params, before finetune", lowrank["metrics"]),
        row("lowrank Linear layers to 50 % params, + finetune 3 epochs", finetune["metrics"]),
        row("lowrank hidden Linear '6' only to 50 % params, before finetune", hidden["metrics"]),
        row("lowrank hidden Linear '6' only to 50 % params, + finetune 3 epochs",
            hidden_ft["metrics"]),
        row("cluster 16 values per layer (no finetune)", cluster["metrics"]),
        row(f"chain {chain_names} (int8)", chain_final),
        "",
        f"- Distillation gain over labels-only training of the same student: "
        f"{(distilled['metrics']['metric'] - scratch['metrics']['metric']) * 100:+.2f} points "
        f"at T=4/alpha=0.9, "
        f"{(distilled_t2['metrics']['metric'] - scratch['metrics']['metric']) * 100:+.2f} points "
        f"at T=2/alpha=0.5 (best epochs {distilled['details']['best_epoch']}, "
        f"{distilled_t2['details']['best_epoch']} vs {scratch['details']['best_epoch']}; "
        "one seed, 360 eval samples: 1 sample = 0.28 points).",
        f"- lowrank: Linear weights {lr_details['params_before']:,} → "
        f"{lr_details['params_after']:,} params "
        f"({lr_details['params_after'] / lr_details['params_before']:.2%}), MACs of those layers "
        f"{lr_details['macs_before']:,} → {lr_details['macs_after']:,}; ranks "
        + ", ".join(f"{n}: {v['rank']}/{v['full_rank']}" for n, v in lr_details["layers"].items())
        + (f"; skipped {lr_details['skipped']}" if lr_details["skipped"] else "") + ".",
        f"- cluster: index-coded size (4-bit indices + fp32 codebooks, fp32 biases) "
        f"{cluster['details']['index_coded_bytes']:,} B vs fp32 parameters "
        f"{cluster['details']['fp32_bytes']:,} B "
        f"({cluster['details']['fp32_bytes'] / cluster['details']['index_coded_bytes']:.2f}x); "
        "the deflate ratio above is what the ONNX file actually gains.",
        "",
    ]
    return "\n".join(lines)


def update_results(path: Path, section: str) -> None:
    """Replace this benchmark's section (from its heading to the next `## `) or append it."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmark results"]
    if HEADING in lines:
        start = lines.index(HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + [""]
    else:
        lines += ["", *section.rstrip("\n").splitlines()]
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text("\n".join(lines).rstrip("\n") + "\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join([sys.executable, sys.argv[0], *argv])
    date = datetime.now(timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    with tempfile.TemporaryDirectory(prefix="bench-dlc-") as scratch:
        reports = experiments(Path(scratch), args.threads)
    section = render(reports, command, date)
    print(section)
    update_results(args.out, section)
    print(f"updated {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
