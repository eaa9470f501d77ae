"""The calibration split as onnxruntime's CalibrationDataReader, checked against the model.

Memory stays flat in the number of samples: onnxruntime's calibrators keep every collected
batch's activations until `collect_data` returns (the histogram ones keep whole tensors), so
the reader supports ORT's strided collection (`CalibStridedMinMax`, despite its name a plain
loop of `set_range` + `collect_data` for every calibrator): at most `CHUNK_BATCHES` batches are
held at once, then their ranges or histograms are merged and the tensors dropped."""

from __future__ import annotations

import numpy as np

from mcomp.errors import StageError
from mcomp.stage import StageContext

CHUNK_BATCHES = 8


class CalibrationReader:
    """Feeds the calibration split to onnxruntime batch by batch (never all at once)."""

    def __init__(self, ctx: StageContext, model, samples: int | None) -> None:
        """`model`: the ONNX model (a ModelProto) whose graph inputs the reader feeds."""
        split = ctx.datasets.calibration
        if split is None or len(split) == 0:
            raise StageError(
                "quantize: the calibration split has no samples; give "
                "`data.calibration` or `data.train`, or use `mode: dynamic`"
            )
        if samples is not None and samples < len(split):
            split = split.subset(np.arange(samples))
        _check_calibration_inputs(split, model)
        self._split, self._batch_size, self._progress = split, ctx.batch_size, ctx.progress
        self._names = [value.name for value in graph_inputs(model)]
        self.samples = len(split)
        self.batch_count = -(-len(split) // ctx.batch_size)
        self._range = range(self.batch_count)
        self._next = 0
        ctx.progress.start("calibrating", total=self.batch_count)

    def stride(self) -> int:
        """Batches per `collect_data` call: the largest divisor of the batch count that is at
        most CHUNK_BATCHES (ORT requires the count to divide evenly)."""
        return max(d for d in range(1, CHUNK_BATCHES + 1) if self.batch_count % d == 0)

    def __len__(self) -> int:
        return self.batch_count

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = range(start_index, min(end_index, self.batch_count))
        self._next = 0

    def get_next(self):
        if self._next >= len(self._range):
            return None
        start = self._range[self._next] * self._batch_size
        self._next += 1
        self._progress.advance()
        end = start + self._batch_size
        return {name: self._split.inputs[name][start:end] for name in self._names}

    def rewind(self) -> None:  # ORT >= 1.17 may call it
        self._next = 0

    def all_inputs(self) -> dict[str, np.ndarray]:
        """Every sample of the split, one array per graph input."""
        return {name: self._split.inputs[name] for name in self._names}


def graph_inputs(model) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _check_calibration_inputs(split, model) -> None:
    """A clear error for data that does not fit, before onnxruntime fails deep inside."""
    for value in graph_inputs(model):
        if value.name not in split.inputs:
            raise StageError(
                f"quantize: the calibration split has no input {value.name!r}; "
                f"it has {sorted(split.inputs)}"
            )
        dims = value.type.tensor_type.shape.dim[1:]
        got = tuple(split.inputs[value.name].shape[1:])
        want = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        fits = len(got) == len(want) and all(w in (None, g) for w, g in zip(want, got, strict=True))
        if not fits:
            shown = tuple("?" if w is None else w for w in want)
            raise StageError(
                f"quantize: calibration input {value.name!r} has per-sample shape "
                f"{got}, the model expects {shown}; check `data.calibration`"
            )
