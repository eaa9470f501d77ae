"""Checks of the data against the model before anything runs: finite inputs, and labels that
fit the model's outputs (a label out of range gives accuracy 0 on the baseline and after
compression, and a drop of 0 passes any `max_accuracy_drop`)."""

from __future__ import annotations

import numpy as np

from mcomp.data.load import Datasets, Split
from mcomp.errors import DataError


def check_finite(datasets: Datasets) -> None:
    """No NaN or Inf in any split's float arrays (inputs and labels)."""
    for split in (datasets.train, datasets.calibration, datasets.eval):
        if split is None:
            continue
        arrays = dict(split.inputs)
        if split.labels is not None:
            arrays["labels"] = split.labels
        for name, array in arrays.items():
            _check_finite_array(f"data.{split.name}", name, array)


def _check_finite_array(key: str, name: str, array: np.ndarray) -> None:
    if array.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(array)
    if bad.any():
        sample = int(np.argwhere(bad)[0][0])
        kinds = " and ".join(
            k for k, present in (("NaN", np.isnan(array).any()), ("Inf", np.isinf(array).any()))
            if present
        )  # fmt: skip
        raise DataError(
            f"{key}: array {name!r} holds {kinds} ({int(bad.sum())} of {array.size} values, "
            f"the first in sample {sample}); clean the data (e.g. np.nan_to_num) or drop "
            "those samples"
        )


def check_labels(split: Split, outputs: np.ndarray, *, classification: bool, key: str) -> None:
    """The labels of `split` fit `outputs` (the model's first output on some samples):
    class indices 0..C-1 for classification, one value per output for regression. `key` names
    the split in messages (`data.eval`, `--data`)."""
    labels = split.labels
    if labels is None:
        return
    if labels.dtype.kind not in "biuf":
        raise DataError(
            f"{key}: the labels hold {_dtype_words(labels)}, not numbers; "
            + ("give class indices 0..C-1" if classification else "give numeric targets")
        )
    if not np.isfinite(outputs).all():
        raise DataError(
            f"{key}: the model's outputs hold NaN or Inf on these samples (the weights or "
            "the inputs are broken); check the model file"
        )
    if classification:
        _check_class_labels(labels, outputs, key)
    elif labels.size != len(labels) * int(np.prod(outputs.shape[1:])):
        raise DataError(
            f"{key}: labels of shape {labels.shape[1:]} per sample do not fit the model's "
            f"outputs of shape {outputs.shape[1:]} per sample"
        )


def _check_class_labels(labels: np.ndarray, outputs: np.ndarray, key: str) -> None:
    if outputs.ndim < 2:
        raise DataError(
            f"{key}: the model gives one value per sample (outputs {outputs.shape[1:]}), not "
            "class scores; for numeric targets set `task: regression`"
        )
    classes = outputs.shape[-1]
    per_sample = outputs.shape[1:-1]
    if labels.shape[1:] == outputs.shape[1:] and classes > 1 and _is_one_hot(labels):
        raise DataError(
            f"{key}: the labels are one-hot (shape {labels.shape}); give class indices "
            "instead, e.g. y.argmax(axis=1)"
        )
    if labels.shape[1:] != per_sample:
        raise DataError(
            f"{key}: labels of shape {labels.shape[1:]} per sample do not fit the model's "
            f"outputs {outputs.shape[1:]} ({classes} class scores"
            + (f" for each of {per_sample} positions" if per_sample else "")
            + "); give one class index per "
            + ("position" if per_sample else "sample")
        )
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise DataError(
            f"{key}: the labels are not whole numbers (e.g. {_first_fraction(labels)}); "
            "classification labels are class indices 0..C-1 (for numeric targets set "
            "`task: regression`)"
        )
    low, high = labels.min(), labels.max()
    if low < 0 or high >= classes:
        raise DataError(
            f"{key}: labels range from {low:g} to {high:g}, but the model gives {classes} "
            f"class scores (labels 0..{classes - 1}); check the labels array, or the model"
        )


def _is_one_hot(labels: np.ndarray) -> bool:
    values = np.unique(labels)
    return bool(np.isin(values, (0, 1)).all() and np.all(labels.sum(axis=-1) == 1))


def _first_fraction(labels: np.ndarray) -> str:
    flat = labels.reshape(-1)
    return f"{flat[np.argmax(flat != np.round(flat))]:g}"


def _dtype_words(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind in "US":
        return f"strings (dtype {array.dtype})"
    if kind == "O":
        return "Python objects"
    return f"values of dtype {array.dtype}"
