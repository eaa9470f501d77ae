"""Render a run's report as a rich table on stderr: stage × metric, deltas vs the baseline."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def stderr_console() -> Console:
    """stderr console; off a terminal (CI logs) wide enough for the table not to wrap."""
    import sys

    return Console(stderr=True, width=None if sys.stderr.isatty() else 150)


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def human_count(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _ratio(before: float | None, after: float | None, smaller_is_better: bool = True) -> str:
    if not before or not after or before == after:
        return ""
    ratio = before / after if smaller_is_better else after / before
    return f" ({ratio:.2f}×)" if ratio >= 1 else f" ({1 / ratio:.2f}× worse)"


def _row(name: str, m: dict[str, Any], base: dict[str, Any], seconds: float | None) -> list[str]:
    metric = f"{m['metric']:.4f}"
    if m is not base:
        metric += f" ({m['metric'] - base['metric']:+.4f})"

    def lat(key: str) -> str:
        return "-" if m[key] is None else f"{m[key]:.3f}" + _ratio(base[key], m[key])

    return [name, human_count(m["params"]), f"{m['sparsity'] * 100:.1f}%",
            human_bytes(m["size_bytes"]) + _ratio(base["size_bytes"], m["size_bytes"]),
            human_bytes(m["size_compressed_bytes"])
            + _ratio(base["size_compressed_bytes"], m["size_compressed_bytes"]),
            human_count(m["macs"]) + _ratio(base["macs"], m["macs"]), metric,
            lat("latency_ms_b1"), lat("latency_ms_batch"),
            "-" if seconds is None else f"{seconds:.1f}"]


def render_report(report: dict[str, Any], console: Console) -> None:
    """The before/after table and the constraint results."""
    base = report["baseline"]["metrics"]
    table = Table(title="mcomp: before and after each stage (ratios vs baseline)",
                  title_justify="left")
    batch = base.get("latency_batch", "N")
    for header in ("stage", "params", "sparsity", "size", "compressed", "MACs",
                   base["metric_name"], "ms b1", f"ms b{batch}", "s"):
        table.add_column(header, justify="left" if header == "stage" else "right")
    table.add_row(*_row("baseline", base, base, report["baseline"].get("seconds")))
    for entry in report["stages"]:
        table.add_row(*_row(f"{entry['name']} [{entry['model_kind']}]", entry["metrics"], base,
                            entry["seconds"]))
    console.print(table)
    for entry in report["stages"]:
        for note in entry.get("notes", []):
            console.print(f"  {entry['name']}: {note}", highlight=False)
    for check in report["constraints"]:
        mark = "[green]ok[/green]" if check["ok"] else "[red]BROKEN[/red]"
        console.print(f"  {mark} {check['name']}: {check['value']} (limit {check['limit']})",
                      highlight=False)
