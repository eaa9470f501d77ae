"""Activation statistics of the fp32 model on the calibration split, collected by mcomp.

One pass runs the prepared fp32 model with every float activation exposed as an output and
keeps, per tensor: the global min and max, the mean over samples of each sample's min and
max (NNCF's default estimator), the mean per channel (bias correction), the minimum and
maximum per channel (equalization, high-bias absorption) and the largest |x| per last-axis
entry (SmoothQuant). A second, optional pass fills a histogram per tensor over its [min, max]
(MSE-optimal clipping, percentiles). Nothing but these summaries is kept: memory is one batch
of activations, and the batch is chosen so that the exposed tensors of one batch fit
`MEMORY_BUDGET` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HISTOGRAM_BINS = 2048
MEMORY_BUDGET = 512 * 2**20  # bytes of exposed activations held at once


@dataclass
class TensorStatistics:
    """Summaries of one activation tensor over the calibration samples."""

    low: float = np.inf
    high: float = -np.inf
    sample_low_sum: float = 0.0
    sample_high_sum: float = 0.0
    samples: int = 0
    channel_sum: np.ndarray | None = None  # per channel (axis 1), summed over samples/positions
    channel_count: int = 0
    last_sum: np.ndarray | None = None  # per last-axis entry (MatMul inputs), summed
    last_count: int = 0
    channel_low: np.ndarray | None = None  # per channel (axis 1) minimum (bias absorption)
    channel_high: np.ndarray | None = None  # per channel (axis 1) maximum (equalization)
    last_absmax: np.ndarray | None = None  # per last-axis entry max |x| (SmoothQuant)
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

    def add(self, batch: np.ndarray) -> None:
        values = batch.astype(np.float32, copy=False)
        if values.size == 0 or not np.isfinite(values).all():
            return  # a NaN activation is reported by the stage, not averaged in
        flat = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(1, -1)
        lows, highs = flat.min(axis=1), flat.max(axis=1)
        self.low, self.high = min(self.low, float(lows.min())), max(self.high, float(highs.max()))
        self.sample_low_sum += float(lows.sum())
        self.sample_high_sum += float(highs.sum())
        self.samples += len(flat)
        if values.ndim >= 2:
            axes = tuple(a for a in range(values.ndim) if a != 1)
            per_channel = values.sum(axis=axes, dtype=np.float64)
            self.channel_sum = (
                per_channel if self.channel_sum is None else self.channel_sum + per_channel
            )
            self.channel_count += values.size // values.shape[1]
            per_last = values.reshape(-1, values.shape[-1]).sum(axis=0, dtype=np.float64)
            self.last_sum = per_last if self.last_sum is None else self.last_sum + per_last
            self.last_count += values.size // values.shape[-1]
            low, high = values.min(axis=axes), values.max(axis=axes)
            self.channel_low = (
                low if self.channel_low is None else np.minimum(self.channel_low, low)
            )
            self.channel_high = (
                high if self.channel_high is None else np.maximum(self.channel_high, high)
            )
            absmax = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
            self.last_absmax = (
                absmax if self.last_absmax is None else np.maximum(self.last_absmax, absmax)
            )

    def add_to_histogram(self, batch: np.ndarray) -> None:
        if not np.isfinite(self.low) or self.high <= self.low:
            return
        counts, _ = np.histogram(batch, bins=HISTOGRAM_BINS, range=(self.low, self.high))
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def bin_centers(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, HISTOGRAM_BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


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
) -> dict[str, TensorStatistics]:
    """Statistics of every float activation of `model` (a ModelProto) over `inputs` (one
    array per graph input, samples on axis 0); graph inputs included. `only`: just these
    tensors (a cheaper pass when a few are needed)."""
    session, names = _exposed_session(model, threads, only)
    count = len(next(iter(inputs.values())))
    batch = _batch_for_memory(session, names, inputs, batch_size)
    stats: dict[str, TensorStatistics] = {}
    passes = 2 if histograms else 1
    if progress is not None:
        progress.start("collecting activation statistics", total=passes * -(-count // batch))
    for pass_index in range(passes):
        for start in range(0, count, batch):
            feed = {k: v[start : start + batch] for k, v in inputs.items()}
            values = dict(zip(names, session.run(names, feed), strict=True))
            values.update(feed if only is None else {k: feed[k] for k in feed if k in only})
            for name, value in values.items():
                value = np.asarray(value)
                if value.dtype.kind != "f":
                    continue
                entry = stats.setdefault(name, TensorStatistics())
                if pass_index == 0:
                    entry.add(value)
                else:
                    entry.add_to_histogram(value)
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

    def __init__(self, model_path, ctx, samples: int | None) -> None:
        self._model_path, self._ctx, self._samples = model_path, ctx, samples
        self._stats: dict[str, TensorStatistics] | None = None
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
            self._stats = collect_statistics(
                model,
                reader.all_inputs(),
                threads=self._ctx.threads,
                histograms=histograms,
                batch_size=self._ctx.batch_size,
                progress=self._ctx.progress,
            )
            self._with_histograms = histograms
            self.seconds += time.perf_counter() - started
        return self._stats
