"""Activation ranges from the statistics mcomp collects (statistics.py), as onnxruntime
`TensorQuantOverrides` ({tensor: [{"rmin", "rmax"}]}).

- `minmax`: the global min and max over every calibration sample (onnxruntime's default).
  One outlier sample decides the range.
- `mean_minmax`: the mean over samples of each sample's min and max (NNCF's default for
  activations): a range most samples fill, clipping the rare extreme ones.
- `mse`: the range, shrunk from min/max towards zero by a common factor, that minimises the
  expected squared error of 8-bit quantization of the tensor's histogram (rounding error
  against clipping error; Banner et al. 2019, "ACIQ", and the search NNCF and TensorRT use).
- `percentile`: the `p`-th percentiles of the histogram at both ends.

Every range contains 0 (so zero is exact, as padding and ReLU need).
"""

from __future__ import annotations

import numpy as np

from mcomp.compressors.quantize.statistics import TensorStatistics

# candidate shrink factors of the min/max range: geometric, so a range set by one outlier
# 50x the bulk can still shrink to the bulk
MSE_FACTORS = np.geomspace(1.0, 0.01, 121)
HISTOGRAM_METHODS = {"mse", "percentile"}


def activation_ranges(
    stats: dict[str, TensorStatistics],
    method: str,
    *,
    percentile: float = 99.999,
    symmetric: bool = False,
    levels: int = 256,
) -> dict[str, list[dict]]:
    """TensorQuantOverrides for every tensor of `stats` by `method`."""
    overrides = {}
    for name, entry in stats.items():
        low, high = _range(entry, method, percentile, symmetric, levels)
        if symmetric:
            bound = max(abs(low), abs(high))
            low, high = -bound, bound
        overrides[name] = [{"rmin": np.float32(min(low, 0.0)), "rmax": np.float32(max(high, 0.0))}]
    return overrides


def _range(entry: TensorStatistics, method: str, percentile: float, symmetric: bool, levels: int):
    if method == "minmax" or (method in HISTOGRAM_METHODS and entry.histogram is None):
        return entry.low, entry.high
    if method == "mean_minmax":
        return entry.mean_low, entry.mean_high
    if method == "percentile":
        return _percentiles(entry, percentile)
    if method == "mse":
        return mse_range(entry, symmetric=symmetric, levels=levels)
    raise ValueError(f"unknown activation range method {method!r}")


def _percentiles(entry: TensorStatistics, percentile: float) -> tuple[float, float]:
    cumulative = np.cumsum(entry.histogram) / max(entry.histogram.sum(), 1)
    centers = entry.bin_centers()
    tail = (100.0 - percentile) / 100.0
    low = centers[min(np.searchsorted(cumulative, tail), len(centers) - 1)]
    high = centers[min(np.searchsorted(cumulative, 1.0 - tail), len(centers) - 1)]
    return float(low), float(high)


def mse_range(
    entry: TensorStatistics, *, symmetric: bool = False, levels: int = 256
) -> tuple[float, float]:
    """The shrink of [min(low, 0), max(high, 0)] with the least expected quantization error."""
    centers = entry.bin_centers()
    counts = entry.histogram.astype(np.float64)
    low, high = min(entry.low, 0.0), max(entry.high, 0.0)
    if symmetric:
        bound = max(-low, high)
        low, high = -bound, bound
    lows, highs = MSE_FACTORS * low, MSE_FACTORS * high
    scales = np.maximum((highs - lows) / (levels - 1), 1e-12)
    zero_points = np.round(-lows / scales)
    # quantize every bin centre with every candidate range at once: (factors, bins)
    q = np.clip(np.round(centers[None, :] / scales[:, None]) + zero_points[:, None], 0, levels - 1)
    restored = (q - zero_points[:, None]) * scales[:, None]
    errors = ((restored - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1)
    best = int(np.argmin(errors))
    return float(lows[best]), float(highs[best])
