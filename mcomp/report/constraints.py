"""Check the recipe's limits against the final model's measurements."""

from __future__ import annotations

from typing import Any

from mcomp.measure.metrics import MetricSpec
from mcomp.recipe.schema import ConstraintsSpec

TOLERANCE = 1e-9  # so that a drop of exactly the limit (up to float noise) holds


def check_constraints(
    spec: ConstraintsSpec, baseline: dict[str, Any], final: dict[str, Any], metric: MetricSpec
) -> list[dict[str, Any]]:
    """One entry per limit the recipe sets: name, limit, measured value, ok."""
    results = []

    def add(name: str, limit: float | None, value: float | None, upper: bool) -> None:
        if limit is None:
            return
        ok = value is not None and (
            value <= limit + TOLERANCE if upper else value >= limit - TOLERANCE
        )
        results.append(
            {
                "name": name,
                "limit": limit,
                "value": None if value is None else round(value, 6),
                "ok": ok,
            }
        )

    drop = baseline["metric"] - final["metric"]
    add(
        "max_accuracy_drop",
        spec.max_accuracy_drop,
        drop if metric.higher_is_better else -drop,
        upper=True,
    )
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
    add(
        "min_speedup",
        spec.min_speedup,
        _ratio(baseline["latency_ms_batch"], final["latency_ms_batch"]),
        upper=False,
    )
    add("max_latency_ms", spec.max_latency_ms, final["latency_ms_b1"], upper=True)
    return results


def _ratio(before: float | None, after: float | None) -> float | None:
    return before / after if before and after else None
