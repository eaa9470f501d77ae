"""`mcomp eval`: the task metric of one model on one labelled split (onnxruntime or torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcomp.data.checks import check_labels
from mcomp.data.load import Split
from mcomp.errors import DataError
from mcomp.measure.metrics import BUILTIN
from mcomp.model.state import ModelState

LABEL_METRICS = ("accuracy", "mse", "mae")
AUTO = "auto"


def choose_metric(outputs: np.ndarray, labels: np.ndarray) -> str:
    """`auto`: accuracy for integer labels against class scores, else mse (float labels are
    regression targets; their accuracy would be a meaningless 0.0000)."""
    if labels.dtype.kind in "iub" and outputs.ndim >= 2 and outputs.shape[-1] > 1:
        return "accuracy"
    return "mse"


def evaluate_model(
    state: ModelState, split: Split, *, metric: str, threads: int, batch_size: int = 64
) -> dict[str, Any]:
    """Run the model over the split and score it against the split's labels."""
    from mcomp.measure.inference import predict_split

    if metric not in (AUTO, *LABEL_METRICS):
        raise DataError(f"--metric {metric!r}: use one of {AUTO}, {', '.join(LABEL_METRICS)}")
    if split.labels is None:
        raise DataError("--data: the data has no labels; name the label array with --labels")
    outputs = predict_split(state, split, batch_size=batch_size, threads=threads)
    chosen = choose_metric(outputs, split.labels) if metric == AUTO else metric
    if metric == "accuracy" and outputs.ndim < 2:
        raise DataError(
            f"--metric accuracy: the model's output has shape {outputs.shape[1:]}, "
            "not class scores; use --metric mse or mae"
        )
    check_labels(split, outputs, classification=chosen == "accuracy", key="--data")
    spec = BUILTIN[chosen]
    try:
        value = spec.fn(outputs, split.labels, outputs)
    except ValueError as exc:
        raise DataError(
            f"--labels: labels of shape {split.labels.shape} do not fit outputs of "
            f"shape {outputs.shape} ({exc})"
        ) from None
    return {
        "model": state.source,
        "model_kind": str(state.kind),
        "metric_name": chosen,
        "metric_chosen": "auto" if metric == AUTO else "given",
        "metric": value,
        "higher_is_better": spec.higher_is_better,
        "samples": len(split),
        "inputs": [i.model_dump() for i in state.inputs],
    }
