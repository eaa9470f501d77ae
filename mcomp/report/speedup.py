"""Speed-ups with their spread, from latency figures timed side by side.

A model's latency is the median of its round medians, and its spread the lowest and the
highest round median (`mcomp.measure.side_by_side`). In every round each model is timed
within milliseconds of the others, so the speed-up of B over A is taken round by round,
`A_r / B_r`: its value is the median of those ratios and its interval a distribution-free
95 % confidence interval of that median (order statistics of the binomial: the 5th to the
11th of 15 ratios; with 5 rounds or fewer, their lowest and highest). A drift of the
machine between rounds (another process starting) slows A and B of the same round alike and
cancels, where comparing the two models' own spreads would count it twice. Reports without
rounds fall back to `median_A / median_B` within the conservative `min_A / max_B` ..
`max_A / min_B` (the interval that contains 1 exactly when the spreads overlap).

A difference is *resolved* only when the whole interval lies more than `RESOLUTION` away from
1: separate onnxruntime sessions of one and the same graph differ by a few percent, so a
smaller difference is not a result. Unresolved speed-ups print as `≈`.

    >>> a = {"median_ms": 2.0, "min_ms": 1.9, "max_ms": 2.1, "rounds_ms": [2.0, 2.1, 1.9]}
    >>> b = {"median_ms": 1.0, "min_ms": 0.95, "max_ms": 1.1, "rounds_ms": [1.0, 1.1, 0.95]}
    >>> s = speedup(a, b)
    >>> s.text(), round(s.low, 3), round(s.high, 3)
    ('×2', 1.909, 2.0)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESOLUTION = 0.05
LABELS = ("b1", "batch")  # keys of `metrics.latency`; "batch" is runtime.latency.batch


@dataclass(frozen=True)
class Speedup:
    """How many times faster B is than A: the estimate and its interval."""

    value: float
    low: float
    high: float
    paired: tuple[float, ...] = ()  # A / B round by round (both timed in the same round)

    @property
    def resolved(self) -> bool:
        """True when the interval lies clear of 1 (by more than `RESOLUTION`)."""
        return self.low > 1 + RESOLUTION or self.high < 1 / (1 + RESOLUTION)

    def text(self) -> str:
        """`×1.8` (faster), `×0.55` (slower) or `≈` (no difference the timing resolves)."""
        if not self.resolved:
            return "≈"
        return f"×{self.value:.2g}" if self.value < 10 else f"×{self.value:.0f}"

    def rounds_at_least(self, limit: float) -> tuple[int, int]:
        """In how many rounds (of how many) A / B reached `limit`."""
        return sum(value >= limit for value in self.paired), len(self.paired)

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "resolved": self.resolved,
        }


def speedup(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> Speedup | None:
    """The speed-up of `after` over `before`, both in the report's latency form
    (`median_ms`, `min_ms`, `max_ms`, optionally `rounds_ms`); None when either is missing."""
    if not before or not after or not after.get("median_ms") or not after.get("min_ms"):
        return None
    # rounds of one run pair up; a report edited by hand might not have both
    rounds = zip(before.get("rounds_ms", ()), after.get("rounds_ms", ()), strict=False)
    paired = tuple(a / b for a, b in rounds if b)
    if paired:
        low, high = median_interval(paired)
        return Speedup(statistics.median(paired), low, high, paired)
    return Speedup(
        value=before["median_ms"] / after["median_ms"],
        low=before["min_ms"] / after["max_ms"],
        high=before["max_ms"] / after["min_ms"],
    )


def median_interval(values: tuple[float, ...], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of `values`: the k-th lowest to the k-th
    highest, k the largest rank whose binomial tail keeps the coverage at `confidence` (the
    lowest and highest when there are too few values for any narrower one).

    The ends of the range widen with every round (the lowest of 15 bimodal ratios is an
    outlier's), where this interval narrows, as an interval of the median should.
    """
    ordered = sorted(values)
    n = len(ordered)
    k = 0  # values cut from each end
    while k + 1 < n / 2 and 2 * _binomial_tail(n, k + 1) <= 1 - confidence:
        k += 1
    return ordered[k], ordered[n - 1 - k]


def _binomial_tail(n: int, k: int) -> float:
    """P(X < k) for X ~ Binomial(n, 1/2): the chance that fewer than k values lie below the
    median, i.e. that the k-th lowest value is above it."""
    return sum(math.comb(n, i) for i in range(k)) / 2**n


def latency_of(metrics: Mapping[str, Any], label: str) -> dict[str, Any] | None:
    """The latency figures of `metrics` at `label`, also from reports written before the
    spread existed (one median: an interval of zero width)."""
    spread = (metrics.get("latency") or {}).get(label)
    if spread:
        return dict(spread)
    value = metrics.get("latency_ms_b1" if label == "b1" else "latency_ms_batch")
    if value is None:
        return None
    return {"median_ms": value, "min_ms": value, "max_ms": value}


def speedup_between(
    before: Mapping[str, Any], after: Mapping[str, Any], label: str
) -> Speedup | None:
    """The speed-up at `label` of the model measured in `after` over the one in `before`."""
    return speedup(latency_of(before, label), latency_of(after, label))
