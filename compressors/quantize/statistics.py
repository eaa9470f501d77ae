"""Activation statistics of the fp32 model on the calibration split, collected by mcomp.

One pass runs the prepared fp32 model with every float activation exposed as an output and
keeps, per tensor: the global min and max, the mean over samples of each sample's min and
max (NNCF's default estimator), the mean per channel of a convolution's input (bias
correction), the minimum and maximum per channel (equalization, high-bias absorption), the
largest |x| per last-axis entry (SmoothQuant) and, when asked, the k largest magnitudes |x|
(percentile ranges, exact: k is what the percentile cuts off and one more, ten-odd values per
tensor at 99.999). A second, optional pass fills a histogram per tensor over its [min, max]
(MSE-optimal clipping, KL thresholds). Nothing but these summaries is kept: memory is one
batch of activations, and the batch is chosen so that the exposed tensors of one batch fit
`MEMORY_BUDGET` bytes.

The tails replace onnxruntime's percentile calibrator, whose 2048-bin histograms of every
tensor, re-binned whenever a batch widens the range, took 116 s of a 140 s quantization of
the PP-OCR detector; a partial sort of the few blocks that can hold them is linear and needs
no second pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mcomp.measure.ort_session import call_rows

HISTOGRAM_BINS = 2048
HISTOGRAM_CHUNK = 2**16  # values binned at once: the buffers stay in the CPU's cache
MEMORY_BUDGET = 512 * 2**20  # bytes of exposed activations held at once
# the most magnitudes kept per tensor (128 KiB); a percentile that cuts off more falls
# back to the histogram (99.999 cuts off 1 in 100,000: 32768 covers 3e9 values per tensor)
TAIL_CAP = 2**15
# graph outputs kept from the statistics pass for the first this many samples: the fp32
# reference that auto calibration scores its candidates against, which then needs no fp32
# pass of its own (on the PP-OCR recogniser that pass took 3-5 s of a 46 s stage)
REFERENCE_SAMPLES = 64


@dataclass
class TensorStatistics:
    """Summaries of one activation tensor over the calibration samples."""

    low: float = np.inf
    high: float = -np.inf
    sample_low_sum: float = 0.0
    sample_high_sum: float = 0.0
    samples: int = 0
    # per channel (axis 1), summed over samples/positions (convolution inputs only)
    channel_sum: np.ndarray | None = None
    channel_count: int = 0
    last_sum: np.ndarray | None = None  # per last-axis entry (MatMul inputs), summed
    last_count: int = 0
    channel_low: np.ndarray | None = None  # per channel (axis 1) minimum (bias absorption)
    channel_high: np.ndarray | None = None  # per channel (axis 1) maximum (equalization)
    last_absmax: np.ndarray | None = None  # per last-axis entry max |x| (SmoothQuant)
    elements: int = 0  # values seen (the percentiles' denominator)
    tail_size: int = 0  # magnitudes kept (0: none)
    tail: np.ndarray | None = field(default=None, repr=False)  # the largest |x|, unsorted
    histogram: np.ndarray | None = field(default=None, repr=False)

    @property
    def mean_low(self) -> float:
        return self.sample_low_sum / max(self.samples, 1)

    @property
    def mean_high(self) -> float:
        return self.sample_high_sum / max(self.samples, 1)

    def channel_mean(self) -> np.ndarray | None:
        return None if self.channel_sum is None else self.channel_sum / self.channel_count

    def last_axis_mean(self) -> np.ndarray | None:
        return None if self.last_sum is None else self.last_sum / self.last_count

    def add(self, batch: np.ndarray, *, last_axis: bool = True, channel_sums: bool = True) -> None:
        """Fold one batch in (samples on axis 0). `last_axis`: keep the per-last-axis
        summaries too (MatMul inputs; on a conv map the last axis is just the width).
        `channel_sums`: keep the per-channel sums (`channel_mean`, which only bias
        correction reads, for a convolution's input)."""
        values = batch.astype(np.float32, copy=False)
        if values.size == 0:
            return
        # every reduction runs along the contiguous innermost axis of a (samples, channels,
        # rest) view, and the small (samples, channels) results give the rest: reductions
        # over the other axes of a conv map are strided and ran 10x slower (43 s of a 48 s
        # statistics pass on the PP-OCR detector)
        if values.ndim > 1:
            grid = values.reshape(len(values), values.shape[1], -1)
        else:
            grid = values.reshape(1, 1, -1)
        lows, highs = grid.min(axis=2), grid.max(axis=2)  # (samples, channels)
        sample_lows, sample_highs = lows.min(axis=1), highs.max(axis=1)
        low, high = float(sample_lows.min()), float(sample_highs.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            return  # a NaN activation is reported by the stage, not averaged in (NaN and
            # inf both reach the extremes, and min/max carry a NaN through)
        self.low, self.high = min(self.low, low), max(self.high, high)
        self.sample_low_sum += float(sample_lows.sum())
        self.sample_high_sum += float(sample_highs.sum())
        self.samples += len(grid)
        self.elements += values.size
        if self.tail_size:
            self._add_to_tails(grid, lows, highs)
        if values.ndim < 2:
            return
        if channel_sums:
            # float32 sums along the contiguous axis (numpy sums those pairwise), float64 after
            per_channel = grid.sum(axis=2).sum(axis=0, dtype=np.float64)
            self.channel_sum = (
                per_channel if self.channel_sum is None else self.channel_sum + per_channel
            )
            self.channel_count += values.size // values.shape[1]
        by_low, by_high = lows.min(axis=0), highs.max(axis=0)  # per channel
        self.channel_low = (
            by_low if self.channel_low is None else np.minimum(self.channel_low, by_low)
        )
        self.channel_high = (
            by_high if self.channel_high is None else np.maximum(self.channel_high, by_high)
        )
        if not last_axis:
            return
        rows = values.reshape(-1, values.shape[-1])
        per_last = rows.sum(axis=0, dtype=np.float64)
        self.last_sum = per_last if self.last_sum is None else self.last_sum + per_last
        self.last_count += values.size // values.shape[-1]
        absmax = np.maximum(rows.max(axis=0), -rows.min(axis=0))
        self.last_absmax = (
            absmax if self.last_absmax is None else np.maximum(self.last_absmax, absmax)
        )

    def _add_to_tails(self, grid: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> None:
        # Only the (sample, channel) blocks whose largest magnitude reaches a bound are read
        # again, where a partial sort of the whole batch took 1.1 s of the PP-OCR detector's
        # 6.9 s statistics pass. Below the bound no value can be among the kept ones: the
        # bound is the smallest magnitude kept so far, once `tail_size` are kept, or the
        # batch's own `tail_size`-th largest magnitude among its largest blocks (a subset of
        # the batch, so no larger than the batch's `tail_size`-th largest, and tight, since
        # the largest values live in the blocks with the largest extremes).
        block_max = np.maximum(highs, -lows).reshape(-1)
        blocks = grid.reshape(len(block_max), -1)
        full = self.tail is not None and len(self.tail) >= self.tail_size
        if full:
            # once `tail_size` are kept, only values above the smallest kept one count (a
            # value equal to it changes nothing kept: a clipped activation has thousands of
            # values at its bound, none of them read); most batches then have no block
            # above it, and the batch's own bound below (a partial sort per tensor and
            # batch, 0.6 s of the detector's pass) is not needed
            bound, above = float(self.tail.min()), np.greater
            if float(block_max.max()) <= bound:
                return
        else:
            k = min(self.tail_size, blocks.size)
            count = -(-k // blocks.shape[1])  # the largest blocks that hold k values
            first = np.argpartition(block_max, len(block_max) - count)[len(block_max) - count :]
            sample = np.abs(blocks[first]).reshape(-1)
            bound = float(np.partition(sample, sample.size - k)[sample.size - k])
            above = np.greater_equal
        read = np.abs(blocks[above(block_max, bound)])
        new = read[above(read, bound)]
        both = new if self.tail is None else np.concatenate([self.tail, new])
        if len(both) > self.tail_size:
            both = np.partition(both, len(both) - self.tail_size)[len(both) - self.tail_size :]
        self.tail = both

    def add_to_histogram(self, batch: np.ndarray) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            return  # no bins to make (np.histogram refused an infinite range too)
        counts = uniform_histogram(batch, self.low, self.high)
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def bin_centers(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, HISTOGRAM_BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


def uniform_histogram(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Counts of `values` in HISTOGRAM_BINS equal bins over [low, high], the range the
    first pass measured on the same samples (values outside it, float rounding at the
    ends, go to the end bins). np.histogram's general path (float64 bin indices, a masked
    copy and an edge correction per block) took 43 of the 58 s of the PP-OCR detector's
    histogram pass; this float32 one, a cache-sized chunk at a time, takes half as long and
    differs from it only for values within float32 rounding of a bin edge."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    scale = np.float32(HISTOGRAM_BINS / (high - low))
    offset = np.float32(low)
    counts = np.zeros(HISTOGRAM_BINS, np.int64)
    size = min(HISTOGRAM_CHUNK, flat.size)
    scaled, index = np.empty(size, np.float32), np.empty(size, np.intp)
    for start in range(0, flat.size, HISTOGRAM_CHUNK):
        part = flat[start : start + HISTOGRAM_CHUNK]
        positions, bins = scaled[: part.size], index[: part.size]
        np.subtract(part, offset, out=positions)
        positions *= scale
        bins[...] = positions  # truncation: the bin of each value
        np.clip(bins, 0, HISTOGRAM_BINS - 1, out=bins)
        counts += np.bincount(bins, minlength=HISTOGRAM_BINS)
    return counts


def tail_size(expected_elements: float, tail: float) -> int:
    """Magnitudes to keep so that the `tail` fraction of `expected_elements` and the next
    one are among them (0 when that exceeds `TAIL_CAP`: the histogram serves instead)."""
    size = int(expected_elements * tail) + 2
    return size if size <= TAIL_CAP else 0


def matmul_inputs(model) -> set[str]:
    """Tensors that MatMul-family nodes read: those whose last axis is the reduced one
    (bias correction's input means and SmoothQuant's channel ranges are taken there)."""
    ops = {"MatMul", "Gemm", "FusedMatMul"}
    return {name for node in model.graph.node if node.op_type in ops for name in node.input}


def activation_names(model) -> list[str]:
    """Float tensors that nodes read or write (graph inputs included), not initializers."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }
    names = [value.name for value in model.graph.input if value.name not in constants]
    seen = set(names)
    for node in model.graph.node:
        for name in list(node.input) + list(node.output):
            if name and name not in seen and name not in constants:
                seen.add(name)
                names.append(name)
    return names


def collect_statistics(
    model,
    inputs: dict[str, np.ndarray],
    *,
    threads: int,
    histograms: bool,
    batch_size: int,
    progress=None,
    only: set[str] | None = None,
    tail: float | None = None,
    outputs: dict[str, list[np.ndarray]] | None = None,
    output_samples: int = 0,
    existing: dict[str, TensorStatistics] | None = None,
) -> dict[str, TensorStatistics]:
    """Statistics of every float activation of `model` (a ModelProto) over `inputs` (one
    array per graph input, samples on axis 0); graph inputs included. `only`: just these
    tensors (a cheaper pass when a few are needed). `tail`: keep each tensor's largest
    magnitudes, this fraction of all its values and one more (percentile ranges).
    `outputs`: filled with the graph outputs of the first `output_samples` samples, batch
    by batch (the fp32 reference that scoring int8 candidates needs, at no extra pass).
    `existing`: statistics a first pass collected on the same inputs; with `histograms`,
    only the histogram pass runs, filling them."""
    session, names = _exposed_session(model, threads, only)
    graph_outputs = [o.name for o in model.graph.output]
    last_axis = matmul_inputs(model)
    conv_inputs = {node.input[0] for node in model.graph.node if node.op_type == "Conv"}
    count = len(next(iter(inputs.values())))
    batch = min(_batch_for_memory(session, names, inputs, batch_size), call_rows(inputs))
    stats: dict[str, TensorStatistics] = {} if existing is None else existing
    passes = [0, 1] if histograms else [0]
    if existing is not None:
        passes = [1] if histograms else []
    if progress is not None:
        what = "activation histograms" if passes == [1] else "activation statistics"
        progress.start(f"collecting {what}", total=len(passes) * -(-count // batch))
    for pass_index in passes:
        for start in range(0, count, batch):
            feed = {k: v[start : start + batch] for k, v in inputs.items()}
            values = dict(zip(names, session.run(names, feed), strict=True))
            if outputs is not None and pass_index == 0 and start < output_samples:
                for name in graph_outputs:
                    outputs.setdefault(name, []).append(values[name][: output_samples - start])
            values.update(feed if only is None else {k: feed[k] for k in feed if k in only})
            for name, value in values.items():
                value = np.asarray(value)
                if value.dtype.kind != "f":
                    continue
                entry = stats.get(name)
                if entry is None and pass_index == 1:
                    continue  # seen by no first pass (an empty tensor): nothing to bin
                if entry is None:
                    entry = stats[name] = TensorStatistics()
                    if tail:  # this batch's share of the split tells the tensor's total
                        rows = min(batch, count - start)
                        entry.tail_size = tail_size(value.size * count / rows, tail)
                if pass_index == 0:
                    entry.add(value, last_axis=name in last_axis, channel_sums=name in conv_inputs)
                else:
                    entry.add_to_histogram(value)
            # this batch's activations go before the next run allocates its own: held
            # through it, each run took fresh pages for all of them (PP-OCR detector: 1.2 GB
            # of page faults, onnxruntime 3.3 s instead of 2.0 s of a 5.5 s pass)
            values = value = None
            if progress is not None:
                progress.advance()
    if progress is not None:
        progress.finish()
    return {name: s for name, s in stats.items() if s.samples}


def _exposed_session(model, threads: int, only: set[str] | None = None):
    """A session of `model` with every float activation (or those in `only`) as an output;
    (session, names)."""
    import onnx

    from mcomp.measure.ort_session import create_session

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    graph_inputs = {i.name for i in exposed.graph.input}
    for name in activation_names(model):
        if only is not None and name not in only:
            continue
        if name not in present and name not in graph_inputs:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    session = create_session(exposed.SerializeToString(), threads)
    return session, [o.name for o in session.get_outputs()]


def _batch_for_memory(session, names, inputs, batch_size: int) -> int:
    """The largest batch (at most `batch_size`) whose exposed activations fit the budget,
    measured on one sample."""
    one = {k: v[:1] for k, v in inputs.items()}
    per_sample = sum(np.asarray(v).nbytes for v in session.run(names, one))
    return int(max(1, min(batch_size, MEMORY_BUDGET // max(per_sample, 1))))


class StatisticsCache:
    """The prepared fp32 model's activation statistics on the calibration split, collected
    on first use and shared by every quantization of one stage (auto calibration's
    candidates, fallback trials, bias correction)."""

    def __init__(self, model_path, ctx, samples: int | None, percentile: float = 99.999) -> None:
        self._model_path, self._ctx, self._samples = model_path, ctx, samples
        # the largest magnitudes that percentile ranges need
        self._tail = (100.0 - percentile) / 100.0
        self._stats: dict[str, TensorStatistics] | None = None
        self._outputs: dict[str, list[np.ndarray]] = {}  # the graph outputs, first samples
        self._with_histograms = False
        self.seconds = 0.0  # spent collecting (the stage reports where its time went)

    def get(self, *, histograms: bool) -> dict[str, TensorStatistics]:
        if self._stats is None or (histograms and not self._with_histograms):
            import time

            import onnx

            started = time.perf_counter()

            from mcomp.compressors.quantize.calibration_reader import CalibrationReader

            model = onnx.load(str(self._model_path))
            # the reader checks the split against the model (a clear error, not a KeyError)
            reader = CalibrationReader(self._ctx, model, self._samples)
            self._ctx.progress.finish()
            if self._stats is None:
                self._outputs = {}
            # a first pass already made: only the histograms are missing (on the PP-OCR
            # detector the first pass again cost 12 s of the fallback's entropy trial)
            self._stats = collect_statistics(
                model,
                reader.all_inputs(),
                threads=self._ctx.threads,
                histograms=histograms,
                batch_size=self._ctx.batch_size,
                progress=self._ctx.progress,
                tail=self._tail,
                outputs=self._outputs,
                output_samples=REFERENCE_SAMPLES,
                existing=self._stats,
            )
            self._with_histograms = histograms
            self.seconds += time.perf_counter() - started
        return self._stats

    def reference_outputs(self, samples: int) -> list[np.ndarray | None] | None:
        """The fp32 model's graph outputs on the first `samples` calibration samples, as
        `int8_check.float_outputs` gives them (float64, None for non-float outputs), kept
        from the statistics pass; None when that pass did not see as many samples."""
        self.get(histograms=False)
        if not self._outputs:
            return None
        joined = [np.concatenate(parts)[:samples] for parts in self._outputs.values()]
        if any(len(part) < samples for part in joined):
            return None
        return [np.asarray(out, np.float64) if out.dtype.kind == "f" else None for out in joined]
