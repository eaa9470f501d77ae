"""Benchmark `mcomp run quickstart` end to end, as a user runs it.

Usage (from the repository root):

    python benchmarks/bench_quickstart.py [--repeat N] [--threads N] [--out benchmarks/RESULTS.md]

Each repeat runs `mcomp run quickstart --report FILE --quiet` as a real subprocess in its own
temporary directory and records its wall time and peak RSS. From the reports it takes the
size, MACs, accuracy and onnxruntime latency figures, fp32 baseline against int8 final, as
ratios within one run. It then times the final model.onnx with a plain onnxruntime session
beside mcomp's own session, to check that mcomp's latency figure is what onnxruntime gives.

The Markdown section it prints replaces the section with the same heading in the results
file (one section per thread count), or is appended. Speed figures are ratios measured side
by side in one run; nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from results_file import update_results  # benchmarks/ is the script's folder

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "RESULTS.md"
# Figures that do not depend on timing: every repeat of the same recipe must give the same.
DETERMINISTIC = (
    "params",
    "nonzero_params",
    "size_bytes",
    "size_compressed_bytes",
    "macs",
    "metric",
)
SIDE_BY_SIDE_ROUNDS = 3


@dataclass
class Run:
    """One `mcomp run quickstart` subprocess: what it cost and what it reported."""

    wall_s: float
    peak_rss_kib: int
    exit_code: int
    report: dict[str, Any]
    model_path: Path


# --- the mcomp subprocess -------------------------------------------------------------------


def mcomp_command(report_file: Path, threads: int | None) -> list[str]:
    """The command line of one run; `--threads` is passed only when the caller chose one."""
    # The console script beside this interpreter, so the code under test is this venv's,
    # whatever PATH says.
    script = Path(sys.executable).parent / "mcomp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mcomp"]
    command += ["run", "quickstart", "--report", str(report_file), "--quiet"]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def run_once(workdir: Path, threads: int | None) -> Run:
    """Run mcomp once in `workdir` and collect its wall time, peak RSS and report."""
    workdir.mkdir(parents=True)
    report_file = workdir / "report.json"
    command = mcomp_command(report_file, threads)
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=err)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN is the maximum over every
        # child reaped so far, so from the second repeat on it could only repeat the largest.
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait
    # Exit 1 means a recipe limit was broken: the report is still complete and worth keeping.
    if proc.returncode not in (0, 1) or not report_file.is_file():
        stderr_tail = (workdir / "stderr.txt").read_text(errors="replace")[-2000:]
        raise SystemExit(
            f"mcomp failed (exit {proc.returncode}): {shlex.join(command)}\n{stderr_tail}"
        )
    report = json.loads(report_file.read_text())
    return Run(
        wall_s=wall_s,
        peak_rss_kib=usage.ru_maxrss,
        exit_code=proc.returncode,
        report=report,
        model_path=workdir / report["artifacts"]["model"],
    )


# --- figures from the reports ---------------------------------------------------------------


def latency_pairs(
    report: dict[str, Any], before: dict[str, Any] | None = None
) -> dict[str, tuple[float, float]]:
    """fp32 and int8 final latency (ms) at batch 1 and at the recipe's batch.

    fp32 is the baseline unless `before` names other metrics of the same run.
    """
    before = before or report["baseline"]["metrics"]
    after = report["final"]["metrics"]
    return {
        "b1": (before["latency_ms_b1"], after["latency_ms_b1"]),
        f"b{after['latency_batch']}": (before["latency_ms_batch"], after["latency_ms_batch"]),
    }


def pre_quantize_metrics(report: dict[str, Any]) -> dict[str, Any] | None:
    """Metrics of the last stage before the first quantize stage (fp32, pruned, finetuned).

    The baseline is timed first in the process, seconds before the final model; this fp32
    model is timed right before the int8 one, so comparing both shows how much of the
    fp32/int8 ratio is drift within the run rather than quantization.
    """
    stages = report["stages"]
    for index, stage in enumerate(stages):
        if stage["type"] == "quantize":
            return stages[index - 1]["metrics"] if index else report["baseline"]["metrics"]
    return None


def varying_fields(runs: list[Run]) -> list[str]:
    """Deterministic figures that nevertheless differ between repeats (should be none)."""
    varying = []
    for part in ("baseline", "final"):
        for field in DETERMINISTIC:
            values = {repr(run.report[part]["metrics"][field]) for run in runs}
            if len(values) > 1:
                varying.append(f"{part}.{field}")
    return varying


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def median_speedups(runs: list[Run], pre_quantize: bool = False) -> dict[str, float]:
    """Median over the repeats of each run's own fp32/int8 latency ratio, per batch size.

    With `pre_quantize`, fp32 is the model just before quantization instead of the baseline.
    """
    per_label: dict[str, list[float]] = {}
    for run in runs:
        before = pre_quantize_metrics(run.report) if pre_quantize else None
        for label, (before_ms, after_ms) in latency_pairs(run.report, before).items():
            value = ratio(before_ms, after_ms)
            if value is not None:
                per_label.setdefault(label, []).append(value)
    return {label: statistics.median(values) for label, values in per_label.items()}


# --- the side-by-side latency check ---------------------------------------------------------


def eval_feeds(model_path: Path, batch: int) -> dict[str, dict[str, np.ndarray]]:
    """Batch-1 and batch-`batch` feeds of the bundled digits eval split, as mcomp times them."""
    import onnxruntime as ort

    resource = importlib.resources.files("mcomp.data").joinpath("digits.npz")
    with importlib.resources.as_file(resource) as path, np.load(path) as arrays:
        x_eval = arrays["x_eval"]
    inputs = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).get_inputs()
    if len(inputs) != 1:
        raise SystemExit(f"expected a one-input model, {model_path} has {len(inputs)}")
    name = inputs[0].name
    # np.resize repeats samples when the split is smaller than the batch, like mcomp does.
    return {
        "b1": {name: x_eval[:1]},
        f"b{batch}": {name: np.resize(x_eval, (batch, *x_eval.shape[1:]))},
    }


def plain_ort_ms(
    model_path: Path, threads: int, feed: dict[str, np.ndarray], warmup: int, runs: int
) -> float:
    """Median ms of a plain onnxruntime session: default options but the thread count.

    The timing loop is written here on purpose rather than borrowed from mcomp, so that a
    fault in mcomp's own timer would show up as a ratio away from 1.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(timings)


def mcomp_session_ms(
    model_path: Path, threads: int, feed: dict[str, np.ndarray], warmup: int, runs: int
) -> float:
    """Median ms of mcomp's own session settings and timer, in this process."""
    from mcomp.measure.ort_session import create_session, time_session

    session = create_session(model_path.read_bytes(), threads)
    return time_session(session, feed, warmup=warmup, runs=runs)


def side_by_side(model_path: Path, report: dict[str, Any], threads: int) -> list[dict[str, Any]]:
    """mcomp's reported latency, mcomp's session here and plain onnxruntime, per batch size.

    Each session is created and timed in its own block (idle onnxruntime threads keep
    spinning, so interleaving calls of two sessions distorts both), and the order of the two
    blocks alternates between rounds so that drift on a shared machine favours neither.
    """
    spec = report["recipe"]["runtime"]["latency"]
    final = report["final"]["metrics"]
    reported = {
        "b1": final["latency_ms_b1"],
        f"b{final['latency_batch']}": final["latency_ms_batch"],
    }
    rows = []
    for label, feed in eval_feeds(model_path, final["latency_batch"]).items():
        # The same counts as mcomp's measure._latency, so both medians mean the same thing.
        runs = spec["runs"] if label == "b1" else max(3, spec["runs"] // 2)
        timed: dict[str, list[float]] = {"plain": [], "mcomp": []}
        for round_index in range(SIDE_BY_SIDE_ROUNDS):
            order = ("plain", "mcomp") if round_index % 2 == 0 else ("mcomp", "plain")
            for which in order:
                timer = plain_ort_ms if which == "plain" else mcomp_session_ms
                timed[which].append(timer(model_path, threads, feed, spec["warmup"], runs))
        rows.append(
            {
                "batch": label,
                "shape": next(iter(feed.values())).shape,
                "reported": reported[label],
                "mcomp": statistics.median(timed["mcomp"]),
                "plain": statistics.median(timed["plain"]),
            }
        )
    return rows


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    # The affinity mask, not os.cpu_count(): containers often see more CPUs than they get.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    # Recorded as asked, but it counts this benchmark too: see cpu_snapshot for the others.
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass
class CpuSnapshot:
    """Machine-wide busy and steal CPU seconds, and those of this process and its children."""

    wall_s: float
    busy_s: float
    steal_s: float
    own_s: float


def cpu_snapshot() -> CpuSnapshot | None:
    """Read /proc/stat and our own rusage; None where /proc/stat does not exist."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )
    return CpuSnapshot(
        wall_s=time.monotonic(),
        busy_s=(user + nice + system + irq + softirq) / tick,
        steal_s=steal / tick,
        own_s=own,
    )


def contention(start: CpuSnapshot | None, end: CpuSnapshot | None) -> dict[str, float] | None:
    """Share of the machine that other processes (and the hypervisor) took meanwhile.

    The load average cannot tell: it counts this benchmark as well. Busy time of the whole
    machine minus our own (children reaped by wait4 included) is everyone else's.
    """
    if start is None or end is None:
        return None
    capacity = (end.wall_s - start.wall_s) * (os.cpu_count() or 1)
    others = max(0.0, (end.busy_s - start.busy_s) - (end.own_s - start.own_s))
    return {
        "others_cpu_s": others,
        "others_share": others / capacity,
        "steal_share": (end.steal_s - start.steal_s) / capacity,
        "wall_s": end.wall_s - start.wall_s,
    }


def utc_date() -> str:
    """The date as `date -u` prints it."""
    return datetime.now(timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")


# --- Markdown ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def runs_table(runs: list[Run]) -> list[str]:
    """One row per repeat and a median row: cost of the run and fp32/int8 latency."""
    labels = list(latency_pairs(runs[0].report))
    header = ["run", "exit", "wall s", "peak RSS MiB"]
    for label in labels:
        header += [f"fp32 {label} ms", f"int8 {label} ms", f"{label} fp32/int8"]
    # Seconds and MiB need fewer digits than sub-millisecond latencies; ratios fewer still.
    digits = [2, 1] + [4, 4, 2] * len(labels)
    rows, columns = [], []
    for index, run in enumerate(runs, 1):
        values = [run.wall_s, run.peak_rss_kib / 1024]
        for before, after in latency_pairs(run.report).values():
            values += [before, after, ratio(before, after)]
        columns.append(values)
        rows.append([str(index), str(run.exit_code)] + _cells(values, digits))
    medians = [_median_or_none(column) for column in zip(*columns, strict=True)]
    rows.append(["**median**", ""] + _cells(medians, digits))
    return table(header, rows)


def _median_or_none(values: tuple[float | None, ...]) -> float | None:
    # A ratio is None when a latency was not measured; the median skips those runs.
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _cells(values: list[float | None], digits: list[int]) -> list[str]:
    return [fmt(value, places) for value, places in zip(values, digits, strict=True)]


def model_table(report: dict[str, Any]) -> list[str]:
    """Baseline against final: size, parameters, MACs, the task metric."""
    before, after = report["baseline"]["metrics"], report["final"]["metrics"]
    rows = []
    for label, field in (
        ("size raw, bytes", "size_bytes"),
        ("size compressed (deflate), bytes", "size_compressed_bytes"),
        ("params", "params"),
        ("nonzero params", "nonzero_params"),
        ("MACs", "macs"),
    ):
        rows.append(
            [
                label,
                f"{before[field]:,}",
                f"{after[field]:,}",
                f"{fmt(ratio(before[field], after[field]), 2)}x",
            ]
        )
    rows.append(
        [
            before["metric_name"],
            fmt(before["metric"], 4),
            fmt(after["metric"], 4),
            f"{(after['metric'] - before['metric']) * 100:+.2f} points",
        ]
    )
    return table(["", "baseline (fp32)", "final (int8)", "baseline/final"], rows)


def side_by_side_table(rows: list[dict[str, Any]]) -> list[str]:
    body = [
        [
            row["batch"],
            fmt(row["reported"], 4),
            fmt(row["mcomp"], 4),
            fmt(row["plain"], 4),
            fmt(ratio(row["reported"], row["plain"])),
            fmt(ratio(row["mcomp"], row["plain"])),
        ]
        for row in rows
    ]
    return table(
        [
            "batch",
            "mcomp report ms",
            "mcomp session here ms",
            "plain ORT ms",
            "report/plain",
            "session/plain",
        ],
        body,
    )


def notes(
    runs: list[Run], check: list[dict[str, Any]], threads: int, busy: dict[str, float] | None
) -> list[str]:
    """Observations derived from the figures, so they stay true when the figures change."""
    found = [int8_note(runs, check[0]["shape"][1:])]
    off = [
        f"{row['batch']} {ratio(row['reported'], row['plain']):.2f}x"
        for row in check
        if abs((ratio(row["reported"], row["plain"]) or 1) - 1) > 0.25
    ]
    if off:
        found.append(
            "mcomp's reported latency differs from plain onnxruntime by more than 25 % "
            f"({', '.join(off)}); the report figure comes from another process and "
            "moment, compare the session/plain column, timed side by side here."
        )
    varying = varying_fields(runs)
    if varying:
        found.append(f"Figures that should repeat varied between runs: {', '.join(varying)}.")
    if busy is not None and (busy["others_share"] > 0.10 or busy["steal_share"] > 0.05):
        found.append(
            "Other processes or the hypervisor took a noticeable share of the CPUs "
            "during the benchmark (see 'Other load meanwhile'): latencies are noisier "
            "than usual."
        )
    if threads > usable_cpus():
        found.append(f"{threads} threads on {usable_cpus()} usable CPUs: oversubscribed.")
    return found


def speed_verdict(low: float, high: float) -> str:
    """Words for a pair of fp32/int8 ratios; within 10 % of 1 is run-to-run noise here."""
    if high < 0.90:
        return "int8 slower"
    if low >= 1.10:
        return "int8 faster"
    return "no clear speed-up"


def int8_note(runs: list[Run], sample_shape: tuple[int, ...]) -> str:
    """What the fp32/int8 latency ratios say, against the baseline and the adjacent fp32 model.

    The baseline is timed first in the process, seconds before the final model; the fp32
    model just before quantization (pruned and finetuned, but dense, so its speed is the
    baseline's) is timed right before the int8 one. Both are shown because on a shared
    machine either can be off by 10-30 % on its own.
    """
    report = runs[0].report
    against_baseline = median_speedups(runs)
    adjacent = median_speedups(runs, pre_quantize=True)
    parts = []
    for label, value in against_baseline.items():
        other = adjacent.get(label)
        pair = [value] if other is None else [value, other]
        shown = f"{value:.2f}x vs baseline" + (
            "" if other is None else f", {other:.2f}x vs pre-quantize fp32"
        )
        parts.append(f"{label}: {shown} ({speed_verdict(min(pair), max(pair))})")
    text = "int8 vs fp32 latency, fp32/int8 medians over runs: " + "; ".join(parts) + "."
    if any("int8 faster" not in part for part in parts):
        params = report["baseline"]["metrics"]["params"]
        shape = "x".join(map(str, sample_shape))
        text += (
            f" At this model size ({params:,} params, {shape} inputs) per-op overhead "
            "(quantizing activations, kernel dispatch) costs as much as the cheaper "
            "int8 arithmetic saves where there is little arithmetic; quantization's "
            "clear win here is size."
        )
    return text


def render(
    runs: list[Run], check: list[dict[str, Any]], context: dict[str, Any], threads: int
) -> str:
    """The whole Markdown section of one benchmark invocation."""
    env = runs[0].report["environment"]
    lines = [
        f"## quickstart: threads={threads}",
        "",
        f"- Command: `{context['command']}`",
        f"- Date: {context['date']}",
        f"- CPU: {cpu_model()}, {usable_cpus()} usable CPUs; ISA: "
        f"{', '.join(env['cpu_isa']) or 'none reported'}",
        f"- Load average (1/5/15 min, includes this benchmark): start "
        f"{context['load_start']}, end {context['load_end']}",
        f"- Other load meanwhile: {busy_line(context['contention'])}",
        f"- mcomp {runs[0].report['mcomp_version']}, python {env['python']}, "
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"threads in report: {env['threads']}",
        "",
        f"### Runs ({len(runs)} x `mcomp run quickstart`)",
        "",
        *runs_table(runs),
        "",
        "Latency: onnxruntime CPU medians from each run's report; fp32 is the baseline "
        "(the torch model's ONNX export), int8 the final model; fp32/int8 > 1 means "
        "int8 is faster. Wall time includes interpreter start and imports.",
        "",
        "### Model: baseline vs final (first run)",
        "",
        *model_table(runs[0].report),
        "",
        "### mcomp latency vs plain onnxruntime (final model.onnx of the last run)",
        "",
        *side_by_side_table(check),
        "",
        f"Plain ORT: `InferenceSession` with default options and intra_op_num_threads="
        f"{threads}; each session timed in its own block, {SIDE_BY_SIDE_ROUNDS} rounds "
        "alternating the order, medians. Ratios near 1 mean mcomp's figure is what "
        "onnxruntime gives.",
        "",
    ]
    found = notes(runs, check, threads, context["contention"])
    if found:
        lines += ["### Notes", "", *[f"- {note}" for note in found], ""]
    return "\n".join(lines)


def busy_line(busy: dict[str, float] | None) -> str:
    if busy is None:
        return "unknown (no /proc/stat)"
    return (
        f"other processes used {busy['others_cpu_s']:.1f} CPU-s "
        f"({busy['others_share']:.0%} of {os.cpu_count()} CPUs over {busy['wall_s']:.0f} s), "
        f"steal {busy['steal_share']:.0%}"
    )


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of mcomp (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for mcomp and plain onnxruntime (default: mcomp's auto)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="results file to update (default benchmarks/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeat and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    context: dict[str, Any] = {
        "command": shlex.join([sys.executable, sys.argv[0], *argv]),
        "date": utc_date(),
        "load_start": load_average(),
    }
    cpu_start = cpu_snapshot()
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as scratch:
        runs = []
        for index in range(args.repeat):
            runs.append(run_once(Path(scratch) / f"run{index}", args.threads))
            print(f"run {index + 1}/{args.repeat}: {runs[-1].wall_s:.2f} s", file=sys.stderr)
        # The thread count mcomp actually used, so plain onnxruntime gets the same.
        threads = runs[-1].report["environment"]["threads"]
        check = side_by_side(runs[-1].model_path, runs[-1].report, threads)
    context["load_end"] = load_average()
    context["contention"] = contention(cpu_start, cpu_snapshot())
    section = render(runs, check, context, threads)
    print(section)
    update_results(args.out, section)
    print(f"updated {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
