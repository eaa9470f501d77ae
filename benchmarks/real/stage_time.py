"""Where mcomp's quantize stage spends its time on real models, next to NNCF's time.

    python benchmarks/real/stage_time.py [--only NAME] [--threads 1] [--rounds 2]
                                         [--label TEXT] [--results benchmarks/RESULTS.md]

For each model of `models.py` (or those whose name contains `--only`): the benchmark's own
`quantize: {mode: auto}` recipe (variants.py, no budget) run with `mcomp run`, `--rounds`
times, and NNCF's `nncf.quantize` on the same fp32 graph and calibration samples, as many
times, alternating, in this one process and on whatever CPUs it is given (pin it with
`taskset`). Reports the median stage seconds, the report's phases (`details.seconds`) of
the median run, NNCF's median, and their ratio — the issue's target is mcomp ≤ 2× NNCF.

The `mcomp` that runs is the one beside this Python (`variants.mcomp_executable`), so the
same script run with another checkout's interpreter times that checkout's code: that is how
the before/after rows of RESULTS.md were made. Writes the section `## real models: quantize
stage time (threads=N)`, one row per model and label, keeping rows of other labels.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import fetch  # noqa: E402
import inputs  # noqa: E402
import models  # noqa: E402
import nncf_ptq  # noqa: E402
import variants  # noqa: E402
from results_file import update_results  # noqa: E402

REPO = HERE.parent.parent
HEADING = "## real models: quantize stage time (threads={threads})"
COLUMNS = "| model | code | mcomp stage s | phases (median run) | NNCF s | mcomp / NNCF |"


def time_model(model, files: dict, threads: int, rounds: int) -> dict:
    import numpy as np

    data = {
        split: inputs.build_split(model.builder, split, count, files, fetch.CACHE)
        for split, count in zip(("calibration", "eval"), model.counts, strict=True)
    }
    data["threads"] = threads
    calibration = np.load(data["calibration"])["x"]
    runs, nncf = [], []
    with tempfile.TemporaryDirectory(prefix=f"mcomp-stage-time-{model.name}-") as tmp:
        work = Path(tmp)
        source = files[model.source]
        fp32 = source
        if model.kind == "torch":
            fp32 = variants.mcomp_export(model, source, data, work)["model"]
        name = variants.input_name(fp32)
        for index in range(rounds):
            folder = work / f"round{index}"
            run = variants.mcomp_variants(model, source, data, folder, budget=False)
            report = run["mcomp auto"]["report"]
            stage = next(s for s in report["stages"] if s["type"] == "quantize")
            runs.append((stage["seconds"], stage["details"].get("seconds", {})))
            _, info = nncf_ptq.nncf_quantize(fp32, calibration, name, folder, False, threads)
            nncf.append(info["seconds"])
    runs.sort(key=lambda r: r[0])
    median_run = runs[(len(runs) - 1) // 2]
    return {
        "name": model.name,
        "mcomp_seconds": statistics.median(r[0] for r in runs),
        "all_mcomp_seconds": [round(r[0], 1) for r in runs],
        "phases": median_run[1],
        "nncf_seconds": statistics.median(nncf),
        "all_nncf_seconds": [round(s, 1) for s in nncf],
    }


def row(result: dict, label: str) -> str:
    phases = ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items() if v >= 0.05)
    ratio = result["mcomp_seconds"] / result["nncf_seconds"]
    return (
        f"| {result['name']} | {label} | {result['mcomp_seconds']:.1f} "
        f"({', '.join(map(str, result['all_mcomp_seconds']))}) | {phases} | "
        f"{result['nncf_seconds']:.1f} ({', '.join(map(str, result['all_nncf_seconds']))}) | "
        f"{ratio:.2f}x |"
    )


def section(args, rows: list[str], load_start, load_end, kept: list[str]) -> str:
    heading = HEADING.format(threads=args.threads)
    command = shlex.join(["python", "benchmarks/real/stage_time.py", *sys.argv[1:]])
    return "\n".join(
        [
            heading,
            "",
            f"- Command: `{command}` (latest rows; earlier labels kept)",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"load average start {' '.join(f'{x:.2f}' for x in load_start)}, "
            f"end {' '.join(f'{x:.2f}' for x in load_end)}",
            "- mcomp: the report's quantize stage seconds, median of the rounds (each round's "
            "in brackets) and that run's phases (`details.seconds`: `statistics` is part of "
            "`first_quantization`); NNCF: the `nncf.quantize` call on the same fp32 graph "
            "and calibration samples, median (rounds). `mode: auto`, no budget.",
            "",
            COLUMNS,
            "|---|---|---|---|---|---|",
            *kept,
            *rows,
            "",
        ]
    )


def _kept_rows(path: Path, heading: str, replaced: set[tuple[str, str]]) -> list[str]:
    """The section's earlier rows, but those of the (model, label) pairs measured now."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if heading not in lines:
        return []
    out = []
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("## "):
            break
        cells = [cell.strip() for cell in line.split("|")]
        is_row = line.startswith("| ") and line != COLUMNS and len(cells) > 3
        if is_row and (cells[1], cells[2]) not in replaced:
            out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--label", default="this checkout", help="the code's name in the table")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    files = fetch.fetch()
    load_start = os.getloadavg()
    rows, measured = [], set()
    for model in models.select(args.only):
        print(f"== {model.name}", file=sys.stderr, flush=True)
        result = time_model(model, files, args.threads, args.rounds)
        rows.append(row(result, args.label))
        measured.add((model.name, args.label))
        print(rows[-1], flush=True)
    heading = HEADING.format(threads=args.threads)
    kept = _kept_rows(args.results, heading, measured)
    update_results(args.results, section(args, rows, load_start, os.getloadavg(), kept))


if __name__ == "__main__":
    main()
