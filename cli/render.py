"""Render a run's report as rich tables: stage × figure, deltas vs the baseline.

One table when it fits the console; on narrow terminals (80 columns) two stacked tables,
sizes first, then the metric and the latency, so that no figure is cut or dropped.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from mcomp.report.speedup import speedup_between

TITLE = "mcomp: before/after each stage (×N: N times smaller/faster than the baseline)"
SIZE_COLUMNS = ("stage", "params", "sparse", "size", "deflated", "MACs")
NO_WRAP = {"stage", "params", "MACs"}


def columns_off_terminal() -> int:
    """Width of output that is not a terminal (CI logs, pipes): $COLUMNS when set, else wide
    enough for the table not to wrap."""
    import os

    value = os.environ.get("COLUMNS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 150


def stderr_console() -> Console:
    """stderr console; off a terminal as wide as `columns_off_terminal`."""
    import sys

    return Console(stderr=True, width=None if sys.stderr.isatty() else columns_off_terminal())


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if abs(value) < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def human_count(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def _ratio(before: float | None, after: float | None) -> str:
    """Baseline / value: ×2.5 means 2.5 times smaller or faster, ×0.8 larger or slower."""
    if not before or not after or before == after:
        return ""
    return f" ×{before / after:.2g}" if before / after < 10 else f" ×{before / after:.0f}"


def _latency(m: dict[str, Any], base: dict[str, Any], label: str) -> str:
    """The median ms and the speed-up over the baseline, `≈` when the timing does not
    resolve a difference (mcomp.report.speedup)."""
    key = "latency_ms_b1" if label == "b1" else "latency_ms_batch"
    if m.get(key) is None:
        return "-"
    if m is base:
        return f"{m[key]:.3g}"
    found = speedup_between(base, m, label)
    return f"{m[key]:.3g}" + ("" if found is None else f" {found.text()}")


def report_cells(
    name: str, m: dict[str, Any], base: dict[str, Any], seconds: float | None
) -> dict[str, str]:
    """Every cell of one row, by column key."""
    return {
        "stage": name,
        "params": human_count(m["params"]),
        "sparse": f"{m['sparsity'] * 100:.0f}%",
        "size": human_bytes(m["size_bytes"]) + _ratio(base["size_bytes"], m["size_bytes"]),
        "deflated": human_bytes(m["size_compressed_bytes"])
        + _ratio(base["size_compressed_bytes"], m["size_compressed_bytes"]),
        "MACs": human_count(m["macs"]) + _ratio(base["macs"], m["macs"]),
        "metric": f"{m['metric']:.4g}",
        "Δ": "" if m is base else f"{m['metric'] - base['metric']:+.3g}",
        "b1": _latency(m, base, "b1"),
        "batch": _latency(m, base, "batch"),
        "s": "-" if seconds is None else f"{seconds:.1f}",
    }


def _headers(base: dict[str, Any]) -> dict[str, str]:
    batch = base.get("latency_batch") or "N"
    names = {key: key for key in (*SIZE_COLUMNS, "Δ", "s")}
    return names | {"metric": base["metric_name"], "b1": "ms b1", "batch": f"ms b{batch}"}


def _table(keys: tuple[str, ...], rows: list[dict[str, str]], headers: dict[str, str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for key in keys:
        table.add_column(
            headers[key], justify="left" if key == "stage" else "right", no_wrap=key in NO_WRAP
        )
    for row in rows:
        table.add_row(*(row[key] for key in keys))
    return table


def report_tables(report: dict[str, Any], width: int) -> list[Table]:
    """The table, or two stacked ones when one would not fit `width` columns."""
    base = report["baseline"]["metrics"]
    rows = [report_cells("baseline", base, base, report["baseline"].get("seconds"))]
    rows += [
        report_cells(entry["name"], entry["metrics"], base, entry.get("seconds"))
        for entry in report["stages"]
    ]
    headers = _headers(base)
    quality = ("stage", "metric", "Δ", "b1", "batch", "s")
    wide = _table(SIZE_COLUMNS + quality[1:], rows, headers)
    if _width(wide) <= width:
        return [wide]
    return [_table(SIZE_COLUMNS, rows, headers), _table(quality, rows, headers)]


def _width(table: Table) -> int:
    # measured on a console wider than any table, so the measure is the table's own
    probe = Console(width=1000)
    return probe.measure(table).maximum


def render_report(report: dict[str, Any], console: Console) -> None:
    """The before/after table(s), the notes, how latency was timed, the constraints."""
    console.print(TITLE, highlight=False)
    for table in report_tables(report, console.width):
        console.print(table)
    for entry in report["stages"]:
        for note in entry.get("notes", []):
            console.print(f"  {entry['name']}: {note}", highlight=False)
    for line in latency_lines(report):
        console.print(f"  {line}", highlight=False)
    for check in report["constraints"]:
        mark = "[green]ok[/green]" if check["ok"] else "[red]BROKEN[/red]"
        console.print(f"  {mark} {constraint_text(check)}", highlight=False)


def latency_lines(report: dict[str, Any]) -> list[str]:
    """How the latency figures were timed, and the machine's load meanwhile."""
    timing = report.get("latency") or {}
    if not timing.get("enabled"):
        return []
    lines = [
        f"latency: median of {timing['rounds']} rounds, all models timed side by side at "
        "the end of the run; ≈: no difference beyond the spread (docs/report.md)"
    ]
    if timing.get("busy_warning"):
        lines.append(f"warning: {timing['busy_warning']}")
    env = report.get("environment") or {}
    if "cpu_isa_source" in env:
        found = ", ".join(env["cpu_isa"]) or "no int8-relevant instruction set"
        lines.append(f"CPU: {found} (from {env['cpu_isa_source']}), {env['threads']} thread(s)")
    return lines


def constraint_text(check: dict[str, Any]) -> str:
    """`min_speedup: 1.12 (limit 1.1; estimate 1.2 in 1.12–1.31, clear, 5/5 rounds)`."""
    text = f"{check['name']}: {check['value']} (limit {check['limit']}"
    if "interval" in check:
        low, high = check["interval"]
        text += f"; estimate {check['estimate']:.3g} in {low:.3g}–{high:.3g}, {check['certainty']}"
        if check.get("rounds_meeting"):
            text += f", {check['rounds_meeting']} rounds within the limit"
    return text + ")"
