"""`mcomp eval`: the task metric of one model on one labelled split (onnxruntime or torch)."""

from __future__ import annotations

from typing import Any

from mcomp.data.checks import check_labels
from mcomp.data.load import Split
from mcomp.errors import DataError
from mcomp.measure.metrics import BUILTIN
from mcomp.model.state import ModelState

LABEL_METRICS = ("accuracy", "mse", "mae")


def evaluate_model(
    state: ModelState, split: Split, *, metric: str, threads: int, batch_size: int = 64
) -> dict[str, Any]:
    """Run the model over the split and score it against the split's labels."""
    from mcomp.measure.inference import predict_split

    if metric not in LABEL_METRICS:
        raise DataError(f"--metric {metric!r}: use one of {', '.join(LABEL_METRICS)}")
    if split.labels is None:
        raise DataError("--data: the data has no labels; name the label array with --labels")
    outputs = predict_split(state, split, batch_size=batch_size, threads=threads)
    if metric == "accuracy" and outputs.ndim < 2:
        raise DataError(
            f"--metric accuracy: the model's output has shape {outputs.shape[1:]}, "
            "not class scores; use --metric mse or mae"
        )
    check_labels(split, outputs, classification=metric == "accuracy", key="--data")
    spec = BUILTIN[metric]
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
        "metric_name": metric,
        "metric": value,
        "higher_is_better": spec.higher_is_better,
        "samples": len(split),
        "inputs": [i.model_dump() for i in state.inputs],
    }
