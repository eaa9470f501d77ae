"""`mcomp report OLD NEW`: the two runs' final figures side by side, and the --fail-on checks."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from mcomp.cli.render import human_bytes, human_count

BYTES = {"size", "compressed"}
COUNTS = {"params", "nonzero", "macs"}


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in BYTES:
        return human_bytes(value)
    if name in COUNTS:
        return human_count(value)
    return f"{value:.4g}"


def _change(name: str, figure: dict[str, Any]) -> str:
    change = figure["change"]
    if change is None:
        return "-"
    if change == 0:
        return "="
    if name in BYTES or name in COUNTS:
        text = ("+" if change > 0 else "-") + _value(name, abs(change))
    else:
        text = f"{change:+.3g}"
    relative = figure["relative"]
    return text if relative is None else f"{text} ({relative:+.1%})"


def render_diff(result: dict[str, Any], console: Console) -> None:
    """The figures table, a caution about latency across runs, the conditions."""
    console.print(f"old: {result['old']}\nnew: {result['new']}", highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("figure", "old", "new", "change"):
        table.add_column(header, justify="left" if header == "figure" else "right")
    for name, figure in result["figures"].items():
        label = result["metric_name"] if name == "metric" else name
        table.add_row(
            label, _value(name, figure["old"]), _value(name, figure["new"]), _change(name, figure)
        )
    console.print(table)
    if any(name.startswith("latency_") for name in result["figures"]):
        console.print(
            "  latency_* are milliseconds from two runs, comparable only on one quiet "
            "machine; speedup_* are each run's own ratio over its baseline",
            highlight=False,
        )
    for check in result["conditions"]:
        mark = "[red]BROKEN[/red]" if check["broken"] else "[green]ok[/green]"
        console.print(
            f"  {mark} {check['condition']}: change {check['change']:+.4g}{check['unit']}",
            highlight=False,
        )
