"""`mcomp report OLD NEW`: what changed from one run to the next, and which --fail-on
conditions that breaks (docs/report.md)."""

from __future__ import annotations

from typing import Any

from mcomp.report.conditions import check_conditions, parse_conditions
from mcomp.report.saved import diff_figures


def diff_reports(
    old: dict[str, Any],
    new: dict[str, Any],
    *,
    labels: tuple[str, str] = ("OLD", "NEW"),
    fail_on: str | None = None,
) -> dict[str, Any]:
    """The final figures of both runs with their change, the conditions' results and `ok`
    (False when a condition is broken)."""
    conditions = parse_conditions(fail_on) if fail_on is not None else []
    checks = check_conditions(conditions, old, new)
    final = new["final"]["metrics"] or {}
    return {
        "old": labels[0],
        "new": labels[1],
        "metric_name": final.get("metric_name", "metric"),
        "figures": diff_figures(old, new),
        "conditions": checks,
        "ok": not any(check["broken"] for check in checks),
    }
