"""Evaluate a model state on the eval split: the task metric and fidelity to the original."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mcomp.errors import NonFiniteError
from mcomp.measure.inference import predict_split
from mcomp.measure.metrics import fidelity
from mcomp.model.state import ModelState

if TYPE_CHECKING:
    from mcomp.stage import StageContext


def eval_outputs(model: ModelState, ctx: StageContext) -> np.ndarray:
    split = ctx.datasets.eval
    return predict_split(model, split, batch_size=ctx.batch_size, threads=ctx.threads)


def _finite(outputs: np.ndarray) -> np.ndarray:
    bad = int((~np.isfinite(outputs)).sum()) if outputs.dtype.kind == "f" else 0
    if bad:
        raise NonFiniteError(
            f"the model's outputs on data.eval hold NaN or Inf ({bad} of {outputs.size} values)"
        )
    return outputs


def evaluate_metric(model: ModelState, ctx: StageContext) -> float:
    """The task metric of `model` on the eval split."""
    outputs = _finite(eval_outputs(model, ctx))
    return ctx.metric.fn(outputs, ctx.datasets.eval.labels, ctx.reference_outputs)


def evaluate_metric_on_first(model: ModelState, ctx: StageContext, count: int) -> float:
    """The task metric of `model` on the first `count` samples of the eval split: a cheap
    score that a search confirms on the whole split (the quantize fallback)."""
    split = ctx.datasets.eval
    if count >= len(split):
        return evaluate_metric(model, ctx)
    part = split.subset(np.arange(count))
    outputs = predict_split(model, part, batch_size=ctx.batch_size, threads=ctx.threads)
    reference = None if ctx.reference_outputs is None else ctx.reference_outputs[:count]
    return ctx.metric.fn(_finite(outputs), part.labels, reference)


def evaluate_all(model: ModelState, ctx: StageContext) -> tuple[float, dict[str, float]]:
    """The task metric and the fidelity metrics, from one pass over the eval split."""
    outputs = _finite(eval_outputs(model, ctx))
    reference = ctx.reference_outputs
    value = ctx.metric.fn(outputs, ctx.datasets.eval.labels, reference)
    return value, fidelity(outputs, reference, ctx.task)
