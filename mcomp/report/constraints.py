"""Check the recipe's limits against the final model's measurements.

Latency limits decide on the conservative end of the measured interval (docs/report.md):
`min_speedup` on the low end of the round-by-round speed-up's interval, `max_latency_ms` on
the high end of the same kind of interval for the final model's round medians (a 95 %
interval of the median, `mcomp.report.speedup.median_interval`; with 5 rounds or fewer the
lowest and the slowest round). Each such check says how sure it is: `clear` when the whole
interval lies on one side of the limit, `uncertain` when the limit falls inside it (counted as
broken: a CI gate must not pass on a lucky round).
"""

from __future__ import annotations

from typing import Any

from mcomp.measure.metrics import MetricSpec
from mcomp.recipe.schema import ConstraintsSpec
from mcomp.report.speedup import latency_of, median_interval, speedup_between

TOLERANCE = 1e-9  # so that a drop of exactly the limit (up to float noise) holds


def check_constraints(
    spec: ConstraintsSpec, baseline: dict[str, Any], final: dict[str, Any], metric: MetricSpec
) -> list[dict[str, Any]]:
    """One entry per limit the recipe sets: name, limit, measured value, ok (and, for latency
    limits, the estimate, the interval and how sure the verdict is)."""
    results = []

    def add(name: str, limit: float | None, value: float | None, upper: bool) -> None:
        if limit is not None:
            results.append(_result(name, limit, value, upper))

    drop = baseline["metric"] - final["metric"]
    drop = drop if metric.higher_is_better else -drop
    add("max_accuracy_drop", spec.max_accuracy_drop, drop, upper=True)
    add("max_relative_drop", spec.max_relative_drop, relative_drop(drop, baseline), upper=True)
    add("max_size_bytes", spec.max_size_bytes, final["size_bytes"], upper=True)
    add(
        "max_compressed_size_bytes",
        spec.max_compressed_size_bytes,
        final["size_compressed_bytes"],
        upper=True,
    )
    add(
        "min_compression",
        spec.min_compression,
        baseline["size_compressed_bytes"] / final["size_compressed_bytes"],
        upper=False,
    )
    if spec.min_speedup is not None:
        results.append(_min_speedup(spec.min_speedup, baseline, final))
    if spec.max_latency_ms is not None:
        results.append(_max_latency(spec.max_latency_ms, final))
    return results


def relative_drop(drop: float, baseline: dict[str, Any]) -> float:
    """The metric's loss as a fraction of the baseline's value (inf: any loss from 0)."""
    scale = abs(baseline["metric"])
    if scale == 0:
        return 0.0 if drop <= 0 else float("inf")
    return drop / scale


def absolute_budget(spec: ConstraintsSpec, baseline_metric: float) -> float | None:
    """The tightest metric loss the constraints allow, in the metric's units (what stages
    such as quantize's fallback aim for), or None when no metric limit is set."""
    budgets = [spec.max_accuracy_drop] if spec.max_accuracy_drop is not None else []
    if spec.max_relative_drop is not None:
        budgets.append(spec.max_relative_drop * abs(baseline_metric))
    return min(budgets) if budgets else None


def _result(name: str, limit: float, value: float | None, upper: bool) -> dict[str, Any]:
    ok = value is not None and (value <= limit + TOLERANCE if upper else value >= limit - TOLERANCE)
    return {
        "name": name,
        "limit": limit,
        "value": None if value is None else round(value, 6),
        "ok": ok,
    }


def _min_speedup(limit: float, baseline: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    ratio = speedup_between(baseline, final, "batch")
    if ratio is None:
        return _result("min_speedup", limit, None, upper=False)
    result = _result("min_speedup", limit, ratio.low, upper=False)
    met, rounds = ratio.rounds_at_least(limit)
    result.update(
        estimate=round(ratio.value, 4),
        interval=[round(ratio.low, 4), round(ratio.high, 4)],
        certainty="clear" if ratio.low >= limit or ratio.high < limit else "uncertain",
        rounds_meeting=f"{met}/{rounds}" if rounds else None,
    )
    return result


def _max_latency(limit: float, final: dict[str, Any]) -> dict[str, Any]:
    figures = latency_of(final, "b1")
    if figures is None:
        return _result("max_latency_ms", limit, None, upper=True)
    rounds = figures.get("rounds_ms", [])
    low, high = median_interval(tuple(rounds)) if rounds else (figures["min_ms"], figures["max_ms"])
    result = _result("max_latency_ms", limit, high, upper=True)
    result.update(
        estimate=figures["median_ms"],
        interval=[low, high],
        certainty="clear" if high <= limit or low > limit else "uncertain",
        rounds_meeting=f"{sum(v <= limit for v in rounds)}/{len(rounds)}" if rounds else None,
    )
    return result
