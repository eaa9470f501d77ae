"""The calibration split as onnxruntime's CalibrationDataReader, checked against the model."""

from __future__ import annotations

from mcomp.errors import StageError
from mcomp.model_state import ModelState
from mcomp.stage import StageContext


class CalibrationReader:
    """Feeds the calibration split to onnxruntime batch by batch (never all at once)."""

    def __init__(self, ctx: StageContext, model: ModelState, samples: int | None) -> None:
        import numpy as np

        split = ctx.datasets.calibration
        if split is None or len(split) == 0:
            raise StageError("quantize: the calibration split has no samples; give "
                             "`data.calibration` or `data.train`, or use `mode: dynamic`")
        if samples is not None and samples < len(split):
            split = split.subset(np.arange(samples))
        _check_calibration_inputs(split, model.onnx_model)
        self._split, self._batch_size, self._progress = split, ctx.batch_size, ctx.progress
        self._names = [value.name for value in graph_inputs(model.onnx_model)]
        self.samples = len(split)
        self._batches = split.batches(ctx.batch_size)
        ctx.progress.start("calibrating", total=-(-len(split) // ctx.batch_size))

    def get_next(self):
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._progress.advance()
        return {name: batch[0][name] for name in self._names}

    def rewind(self) -> None:  # ORT >= 1.17 may call it
        self._batches = self._split.batches(self._batch_size)


def graph_inputs(model) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _check_calibration_inputs(split, model) -> None:
    """A clear error for data that does not fit, before onnxruntime fails deep inside."""
    for value in graph_inputs(model):
        if value.name not in split.inputs:
            raise StageError(f"quantize: the calibration split has no input {value.name!r}; "
                             f"it has {sorted(split.inputs)}")
        dims = value.type.tensor_type.shape.dim[1:]
        got = tuple(split.inputs[value.name].shape[1:])
        want = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        fits = len(got) == len(want) and all(w in (None, g) for w, g in zip(want, got, strict=True))
        if not fits:
            shown = tuple("?" if w is None else w for w in want)
            raise StageError(f"quantize: calibration input {value.name!r} has per-sample shape "
                             f"{got}, the model expects {shown}; check `data.calibration`")
