"""Render a run's report as a rich table on stderr: stage × metric, deltas vs the baseline."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def stderr_console() -> Console:
    """stderr console; off a terminal (CI logs) wide enough for the table not to wrap."""
    import sys

    return Console(stderr=True, width=None if sys.stderr.isatty() else 150)


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


def _row(name: str, m: dict[str, Any], base: dict[str, Any], seconds: float | None) -> list[str]:
    metric = f"{m['metric']:.4g}"
    if m is not base:
        metric += f" {m['metric'] - base['metric']:+.3g}"

    def lat(key: str) -> str:
        return "-" if m[key] is None else f"{m[key]:.3g}" + _ratio(base[key], m[key])

    return [
        name,
        human_count(m["params"]),
        f"{m['sparsity'] * 100:.0f}%",
        human_bytes(m["size_bytes"]) + _ratio(base["size_bytes"], m["size_bytes"]),
        human_bytes(m["size_compressed_bytes"])
        + _ratio(base["size_compressed_bytes"], m["size_compressed_bytes"]),
        human_count(m["macs"]) + _ratio(base["macs"], m["macs"]),
        metric,
        lat("latency_ms_b1"),
        lat("latency_ms_batch"),
        "-" if seconds is None else f"{seconds:.1f}",
    ]


def render_report(report: dict[str, Any], console: Console) -> None:
    """The before/after table and the constraint results."""
    base = report["baseline"]["metrics"]
    table = Table(
        title="mcomp: before/after each stage (×N = N times smaller/faster than the baseline)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    batch = base.get("latency_batch", "N")
    # the stage time column is dropped on narrow terminals so the figures stay readable
    narrow = console.width < 100
    headers = [
        "stage",
        "params",
        "sparse",
        "size",
        "deflated",
        "MACs",
        base["metric_name"],
        "ms b1",
        f"ms b{batch}",
    ] + ([] if narrow else ["s"])
    for header in headers:
        table.add_column(
            header,
            justify="left" if header == "stage" else "right",
            no_wrap=header in ("stage", "params", "MACs"),
        )
    rows = [_row("baseline", base, base, report["baseline"].get("seconds"))]
    rows += [
        _row(entry["name"], entry["metrics"], base, entry["seconds"]) for entry in report["stages"]
    ]
    for row in rows:
        table.add_row(*row[: len(headers)])
    console.print(table)
    for entry in report["stages"]:
        for note in entry.get("notes", []):
            console.print(f"  {entry['name']}: {note}", highlight=False)
    for check in report["constraints"]:
        mark = "[green]ok[/green]" if check["ok"] else "[red]BROKEN[/red]"
        console.print(
            f"  {mark} {check['name']}: {check['value']} (limit {check['limit']})", highlight=False
        )
