"""Do identical runs report the same latency? Six `mcomp run quickstart` runs, the figures
that must not move between them.

Usage (from the repository root, on a quiet machine):

    python benchmarks/bench_latency_honesty.py [--repeat 6] [--threads 1] [--against main]

Each repeat is a real `mcomp run quickstart --report FILE --quiet` subprocess. From every
report it takes

- the prune stage's latency ratio over the baseline (unstructured pruning cannot change
  latency: every run should say 1, within 0.9-1.1), at batch 1 and at the recipe's batch;
- the int8 speed-up of the final model over the baseline at both batch sizes,

and reports their range across the runs. `--against REF` builds mcomp at git REF (without
its dependencies, into a temporary folder) and runs the same repeats with it, alternating
with the code under test run by run, so that both see the same machine: the int8
speed-up's spread across runs should be at most half of REF's.

The Markdown section it prints replaces its own section of benchmarks/RESULTS.md. Other
processes' share of the CPUs is recorded beside the figures; above 10 % the section says the
machine was not quiet and the figures are not a result.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_quickstart import (  # benchmarks/ is the script's folder
    busy_line,
    contention,
    cpu_model,
    cpu_snapshot,
    fmt,
    load_average,
    table,
    usable_cpus,
    utc_date,
)
from results_file import update_results

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "RESULTS.md"
QUIET_SHARE = 0.10  # other processes above this share of the CPUs: not a quiet machine


@dataclass
class Code:
    """The mcomp to run: this checkout's, or one built from a git ref."""

    label: str
    env: dict[str, str]


def build_ref(ref: str, scratch: Path) -> Code:
    """mcomp at `ref`, built without dependencies into `scratch` (they are this venv's)."""
    source, site = scratch / "source", scratch / "site"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), str(source)],
        check=True,
    )
    # PYTHONPATH is searched before this venv's editable install of the code under test
    return Code(f"mcomp at {ref}", {**os.environ, "PYTHONPATH": str(site)})


def run_quickstart(code: Code, workdir: Path, threads: int) -> dict[str, Any]:
    """One `mcomp run quickstart`; its report."""
    import json

    workdir.mkdir(parents=True)
    report = workdir / "report.json"
    command = [sys.executable, "-m", "mcomp", "run", "quickstart", "--report", str(report)]
    command += ["--quiet", "--threads", str(threads)]
    result = subprocess.run(command, cwd=workdir, env=code.env, capture_output=True, text=True)
    if result.returncode not in (0, 1) or not report.is_file():
        raise SystemExit(f"{code.label} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(report.read_text())


def figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The prune stage's ratio over the baseline and the final int8 speed-up, both batches."""
    base = report["baseline"]["metrics"]
    prune = next(s for s in report["stages"] if s["type"] == "prune")["metrics"]
    final = report["final"]["metrics"]

    def ratio(after: dict[str, Any], label: str) -> float | None:
        # the speed-up the report states (round by round), where the code has one; older
        # code's reports only have the medians
        stated = (after.get("speedup") or {}).get(label)
        if stated:
            return stated["value"]
        before_ms, after_ms = base[f"latency_ms_{label}"], after[f"latency_ms_{label}"]
        return before_ms / after_ms if before_ms and after_ms else None

    return {
        "prune b1": ratio(prune, "b1"),
        "prune batch": ratio(prune, "batch"),
        "int8 b1": ratio(final, "b1"),
        "int8 batch": ratio(final, "batch"),
    }


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), max(values), max(values) - min(values)


def summary_rows(per_code: dict[str, list[dict[str, float | None]]]) -> list[list[str]]:
    rows = []
    for label, runs in per_code.items():
        for name in runs[0]:
            values = [run[name] for run in runs if run[name] is not None]
            low, high, width = spread(values)
            rows.append(
                [
                    label,
                    name,
                    fmt(statistics.median(values)),
                    f"{fmt(low)}–{fmt(high)}",
                    fmt(width),
                    " ".join(fmt(v, 2) for v in values),
                ]
            )
    return rows


def verdicts(per_code: dict[str, list[dict[str, float | None]]], tested: str) -> list[str]:
    """The issue's targets, checked against the figures."""
    runs = per_code[tested]
    lines = []
    for name in ("prune b1", "prune batch"):
        values = [run[name] for run in runs if run[name] is not None]
        inside = all(0.9 <= value <= 1.1 for value in values)
        lines.append(
            f"{name}: {fmt(min(values))}–{fmt(max(values))} over {len(values)} runs: "
            + ("within 0.9–1.1 (target met)" if inside else "outside 0.9–1.1 (target missed)")
        )
    for label, other in per_code.items():
        if label == tested:
            continue
        for name in ("int8 b1", "int8 batch"):
            new = spread([r[name] for r in runs if r[name] is not None])[2]
            old = spread([r[name] for r in other if r[name] is not None])[2]
            met = new <= old / 2
            lines.append(
                f"{name} spread across runs: {fmt(new)} vs {fmt(old)} with {label} "
                f"({'at most half: target met' if met else 'more than half: target missed'})"
            )
    return lines


def render(per_code, tested: str, context: dict[str, Any]) -> str:
    busy = context["contention"]
    quiet = busy is not None and busy["others_share"] <= QUIET_SHARE
    lines = [
        f"## latency honesty: quickstart x{context['repeat']}, threads={context['threads']}",
        "",
        f"- Command: `{context['command']}`",
        f"- Date: {context['date']}",
        f"- CPU: {cpu_model()}, {usable_cpus()} usable CPUs",
        f"- Load average (1/5/15 min, includes this benchmark): start {context['load_start']}, "
        f"end {context['load_end']}",
        f"- Other load meanwhile: {busy_line(busy)}"
        + ("" if quiet else " — **not a quiet machine: these figures are not a result**"),
        "",
        *table(
            ["code", "figure", "median", "range", "spread", "every run"],
            summary_rows(per_code),
        ),
        "",
        "Ratios are each run's reported speed-up over the baseline (`metrics.speedup`, the "
        "median of the round-by-round ratios; code without it: baseline / stage median "
        "latency), > 1: faster. The prune stage is unstructured (storage only), so its true "
        "ratio is 1.",
        "",
        *[f"- {line}" for line in verdicts(per_code, tested)],
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=6, help="runs per code (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every run")
    parser.add_argument("--against", metavar="REF", help="also run mcomp at this git ref")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file")
    args = parser.parse_args(argv)
    if args.repeat < 2 or args.threads < 1:
        parser.error("--repeat must be at least 2 and --threads at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tested = "this checkout"
    context: dict[str, Any] = {
        "command": shlex.join([sys.executable, sys.argv[0], *argv]),
        "date": utc_date(),
        "load_start": load_average(),
        "repeat": args.repeat,
        "threads": args.threads,
    }
    with tempfile.TemporaryDirectory(prefix="bench-honesty-") as scratch:
        codes = [Code(tested, dict(os.environ))]
        if args.against:
            codes.append(build_ref(args.against, Path(scratch) / "ref"))
        per_code: dict[str, list[dict[str, float | None]]] = {c.label: [] for c in codes}
        start = cpu_snapshot()
        for index in range(args.repeat):
            for code in codes if index % 2 == 0 else codes[::-1]:  # alternate: same machine
                began = time.perf_counter()
                workdir = Path(scratch) / f"code{codes.index(code)}-run{index}"
                report = run_quickstart(code, workdir, args.threads)
                per_code[code.label].append(figures(report))
                print(
                    f"{code.label} run {index + 1}/{args.repeat}: "
                    f"{time.perf_counter() - began:.1f} s",
                    file=sys.stderr,
                )
        context["contention"] = contention(start, cpu_snapshot())
    context["load_end"] = load_average()
    section = render(per_code, tested, context)
    print(section)
    update_results(args.out, section)
    print(f"updated {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
