"""Saved reports (`report.json`, `--report FILE`): read one back, and take the figures of its
final model that `mcomp report OLD NEW` compares."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcomp.errors import ReportError

REQUIRED = ("baseline", "stages", "final", "constraints")


def load_report(path: Path) -> dict[str, Any]:
    """The report in `path`; ReportError when it is missing, not JSON or not a report."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read it ({exc})") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg}); expected the report.json "
            "of `mcomp run`"
        ) from None
    missing = [key for key in REQUIRED if key not in report] if isinstance(report, dict) else []
    if not isinstance(report, dict) or missing:
        what = f"no {', '.join(missing)}" if missing else f"a JSON {type(report).__name__}"
        raise ReportError(
            f"{path}: not an mcomp report ({what}); expected the report.json of `mcomp run`"
        )
    return report


def _final(report: dict[str, Any]) -> dict[str, Any]:
    return report["final"]["metrics"] or {}


def _delta(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda report: (report["final"].get("delta") or {}).get(key)


def _metric(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda report: _final(report).get(key)


def _fidelity(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda report: (_final(report).get("fidelity") or {}).get(key)


# name in --fail-on → (what it is, how to read it from a report, higher is better)
FIGURES: dict[str, tuple[str, Callable[[dict[str, Any]], float | None], bool | None]] = {
    "metric": ("the task metric of the final model", _metric("metric"), None),
    "size": ("ONNX file size, bytes", _metric("size_bytes"), False),
    "compressed": ("deflate-compressed size, bytes", _metric("size_compressed_bytes"), False),
    "params": ("parameters", _metric("params"), False),
    "nonzero": ("non-zero parameters", _metric("nonzero_params"), False),
    "sparsity": ("share of zero parameters", _metric("sparsity"), None),
    "macs": ("multiply-accumulates per sample", _metric("macs"), False),
    "compression": ("baseline / final compressed size", _delta("size_compressed_ratio"), True),
    "speedup_b1": ("baseline / final latency at batch 1 (one run)", _delta("speedup_b1"), True),
    "speedup_batch": (
        "baseline / final latency at the larger batch (one run)",
        _delta("speedup_batch"),
        True,
    ),
    "latency_b1": ("final latency at batch 1, ms", _metric("latency_ms_b1"), False),
    "latency_batch": ("final latency at the larger batch, ms", _metric("latency_ms_batch"), False),
    "cosine": ("cosine similarity to the original's outputs", _fidelity("cosine"), True),
    "top1_agreement": ("top-1 agreement with the original", _fidelity("top1_agreement"), True),
}


def figure_value(report: dict[str, Any], name: str) -> float | None:
    """One figure of the report's final model (None when the run did not measure it)."""
    return FIGURES[name][1](report)


def metric_direction(report: dict[str, Any]) -> bool:
    """Whether the report's task metric is better when higher."""
    from mcomp.measure.metrics import BUILTIN

    name = _final(report).get("metric_name")
    return BUILTIN[name].higher_is_better if name in BUILTIN else True


def diff_figures(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every figure present in either report: old, new, change and relative change."""
    result = {}
    for name in FIGURES:
        before, after = figure_value(old, name), figure_value(new, name)
        if before is None and after is None:
            continue
        both = before is not None and after is not None
        change = after - before if both else None
        result[name] = {
            "old": before,
            "new": after,
            "change": change,
            "relative": change / abs(before) if both and before else None,
        }
    return result
