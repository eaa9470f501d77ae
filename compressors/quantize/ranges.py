"""Activation ranges from the statistics mcomp collects (statistics.py), as onnxruntime
`TensorQuantOverrides` ({tensor: [{"rmin", "rmax"}]}).

- `minmax`: the global min and max over every calibration sample (onnxruntime's default).
  One outlier sample decides the range.
- `mean_minmax`: the mean over samples of each sample's min and max (NNCF's default for
  activations): a range most samples fill, clipping the rare extreme ones.
- `mse`: the range, shrunk from min/max towards zero by a common factor, that minimises the
  expected squared error of 8-bit quantization of the tensor's histogram (rounding error
  against clipping error; Banner et al. 2019, "ACIQ", and the search NNCF and TensorRT use).
- `percentile`: onnxruntime's percentile range as `quantize_static` computes it (its
  calibrator's default `symmetric=True`): the `p`-th percentile `b` of |x|, the range
  [-b, b] clamped to [min, max]. Exact here, from the largest magnitudes mcomp keeps
  (statistics.py), where onnxruntime reads it off a 2048-bin histogram; the histogram
  serves a tensor whose tail was too large to keep. (The two-sided percentile, `(100 - p)/2`
  cut at each end, gave the PP-OCR recogniser 0.36 relative output error against 0.30.)
- `entropy`: the symmetric clipping threshold whose 128-level quantized histogram is closest
  to the real one in KL divergence (TensorRT's method, onnxruntime's formula), computed here
  on the 2048-bin histograms mcomp collects anyway.
  onnxruntime's own calibrator runs the same search as a Python loop per candidate: 304 s on
  a 0.6 M-parameter OCR classifier, against well under a second here.

Every range contains 0 (so zero is exact, as padding and ReLU need).
"""

from __future__ import annotations

import numpy as np

from mcomp.compressors.quantize.statistics import TensorStatistics

# candidate shrink factors of the min/max range: geometric, so a range set by one outlier
# 50x the bulk can still shrink to the bulk
MSE_FACTORS = np.geomspace(1.0, 0.01, 121)
HISTOGRAM_METHODS = {"mse", "entropy"}  # and percentile, for a tensor without tails
QUANTIZED_BINS = 128  # the KL search's quantized levels (onnxruntime's and TensorRT's)
ENTROPY_CANDIDATES = 240  # thresholds tried (onnxruntime tries all 961 of 2048 bins)


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
    if method == "percentile" and has_tails(entry, percentile):
        return tail_percentiles(entry, percentile)
    if method == "minmax" or (
        method in {*HISTOGRAM_METHODS, "percentile"} and entry.histogram is None
    ):
        return entry.low, entry.high
    if method == "mean_minmax":
        return entry.mean_low, entry.mean_high
    if method == "percentile":
        return _percentiles(entry, percentile)
    if method == "mse":
        return mse_range(entry, symmetric=symmetric, levels=levels)
    if method == "entropy":
        return entropy_range(entry)
    raise ValueError(f"unknown activation range method {method!r}")


def _cut(entry: TensorStatistics, percentile: float) -> int:
    """How many magnitudes the percentile cuts off."""
    return int(entry.elements * (100.0 - percentile) / 100.0)


def has_tails(entry: TensorStatistics, percentile: float) -> bool:
    """Whether the magnitudes kept for `entry` hold what `percentile` cuts off, and one more."""
    return entry.tail is not None and _cut(entry, percentile) < len(entry.tail)


def tail_percentiles(entry: TensorStatistics, percentile: float) -> tuple[float, float]:
    """The exact percentile range: `b`, the largest |x| but the cut above it, as [-b, b]
    clamped to the observed [min, max]."""
    cut = _cut(entry, percentile)
    index = len(entry.tail) - 1 - cut
    bound = float(np.partition(entry.tail, index)[index])
    return max(-bound, entry.low), min(bound, entry.high)


def _percentiles(entry: TensorStatistics, percentile: float) -> tuple[float, float]:
    """The same read off the histogram (bin centres), for a tensor without a kept tail."""
    magnitudes = np.abs(entry.bin_centers())
    order = np.argsort(magnitudes)
    cumulative = np.cumsum(entry.histogram[order]) / max(entry.histogram.sum(), 1)
    index = min(np.searchsorted(cumulative, percentile / 100.0), len(order) - 1)
    bound = float(magnitudes[order][index])
    return max(-bound, entry.low), min(bound, entry.high)


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


def entropy_range(entry: TensorStatistics) -> tuple[float, float]:
    """onnxruntime's KL-divergence threshold search (`HistogramCalibrater` with 2048 bins,
    `get_entropy_threshold`), the same formula, vectorised per candidate and run on mcomp's
    histogram re-binned onto onnxruntime's symmetric [-max|x|, max|x|] bins."""
    bound = max(abs(entry.low), abs(entry.high))
    if bound == 0:
        return entry.low, entry.high
    bins = len(entry.histogram)
    hist, edges = np.histogram(
        entry.bin_centers(), bins=bins, range=(-bound, bound), weights=entry.histogram
    )
    zero, half = bins // 2, QUANTIZED_BINS // 2
    candidates = np.unique(np.linspace(half, zero, ENTROPY_CANDIDATES).astype(int))
    divergences = [_ort_divergence(hist, zero - i, min(zero + i + 1, bins)) for i in candidates]
    i = int(candidates[int(np.argmin(divergences))])
    low, high = float(edges[zero - i]), float(edges[min(zero + i + 1, bins)])
    return max(low, entry.low), min(high, entry.high)


def _ort_divergence(hist: np.ndarray, start: int, end: int) -> float:
    """KL(p || q) of one candidate slice, as onnxruntime computes it: p the slice with the
    outliers added to its end bins, q the slice merged into `QUANTIZED_BINS` levels, each
    level's mass spread over the bins where p is non-zero (integer division, as there)."""
    sliced = hist[start:end]
    p = sliced.copy()
    p[0] += hist[:start].sum()
    p[-1] += hist[end:].sum()
    merged = len(sliced) // QUANTIZED_BINS
    body = QUANTIZED_BINS * merged
    levels = sliced[:body].reshape(QUANTIZED_BINS, merged).sum(axis=1)
    levels[-1] += sliced[body:].sum()
    norm = (p[:body] != 0).reshape(QUANTIZED_BINS, merged).sum(axis=1)
    q = np.zeros(len(p))
    q[:body] = np.repeat(np.where(norm > 0, np.trunc(levels / np.maximum(norm, 1)), 0), merged)
    p, q = _smooth(p), _smooth(q)
    if p is None or q is None:
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))


def _smooth(values: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """onnxruntime's smooth_distribution: zeros get `eps`, taken off the non-zero bins."""
    zeros = values == 0
    if zeros.all():
        return None
    taken = eps * zeros.sum() / (~zeros).sum()
    return values.astype(np.float64) + np.where(zeros, eps, -taken)


def adjust_like_onnxruntime(ranges: dict[str, list[dict]], model, quantized: set[str]) -> None:
    """onnxruntime's own edit of calibrated ranges (`adjust_tensor_ranges`), in place: the
    input of a quantized Relu or Clip that feeds nothing else takes the output's range (the
    pair runs as one op in int8, and the clipped-off part needs no levels), and a quantized
    Softmax's output is [0, 1]. Tensor overrides bypass that edit, so ranges handed over as
    overrides must carry it: without it a QOperator model's QLinearConv outputs kept their
    full pre-ReLU range (tests/test_quantize_methods.py; QDQ models fold the pair anyway).
    `quantized`: names of the nodes onnxruntime will quantize."""
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in model.graph.node:
        if node.name not in quantized:
            continue
        if node.op_type in ("Clip", "Relu"):
            source, target = node.input[0], node.output[0]
            if consumers.get(source) == 1 and source in ranges and target in ranges:
                ranges[source] = [dict(ranges[target][0])]
        elif node.op_type == "Softmax" and node.output[0] in ranges:
            ranges[node.output[0]] = [{"rmin": np.float32(0.0), "rmax": np.float32(1.0)}]
