"""Task metrics (with labels) and fidelity metrics (against the original model, no labels)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcomp.errors import DataError, MetricError
from mcomp.factory import import_factory, user_code
from mcomp.recipe.schema import Recipe, Task

# (outputs, labels, reference outputs) -> value
MetricFn = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], float]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    needs_labels: bool
    fn: MetricFn


def accuracy(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """Share of argmax predictions (over the last axis) equal to the labels; per position
    for sequence outputs (one label per token)."""
    predicted = outputs.argmax(axis=-1).reshape(-1)
    labels = labels.reshape(-1)
    if predicted.shape != labels.shape:
        raise DataError(
            f"metric 'accuracy': the model gives {predicted.size} predictions "
            f"(outputs {tuple(outputs.shape)}, argmax over the last axis) for "
            f"{labels.size} labels; for float targets set `task: regression` "
            "(metric mse), else check the labels of data.eval"
        )
    return float(np.mean(predicted == labels))


def mse(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean((outputs.astype(np.float64) - labels.reshape(outputs.shape)) ** 2))


def mae(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean(np.abs(outputs.astype(np.float64) - labels.reshape(outputs.shape))))


def top1_agreement(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean(outputs.argmax(axis=-1) == reference.argmax(axis=-1)))


def cosine(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def mean_abs_diff(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean(np.abs(outputs.astype(np.float64) - reference)))


def max_abs_diff(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.max(np.abs(outputs.astype(np.float64) - reference)))


BUILTIN = {
    "accuracy": MetricSpec("accuracy", True, True, accuracy),
    "mse": MetricSpec("mse", False, True, mse),
    "mae": MetricSpec("mae", False, True, mae),
    "top1_agreement": MetricSpec("top1_agreement", True, False, top1_agreement),
    "cosine": MetricSpec("cosine", True, False, cosine),
    "mean_abs_diff": MetricSpec("mean_abs_diff", False, False, mean_abs_diff),
    "max_abs_diff": MetricSpec("max_abs_diff", False, False, max_abs_diff),
}


def resolve_metric(recipe: Recipe, *, has_labels: bool) -> MetricSpec:
    """The recipe's metric, or the default for its task and whether the eval split has labels."""
    name = recipe.metric
    if name is None:
        if recipe.task == Task.CLASSIFICATION:
            name = "accuracy" if has_labels else "top1_agreement"
        else:
            name = "mse" if has_labels else "cosine"
    if name in BUILTIN:
        spec = BUILTIN[name]
        if spec.needs_labels and not has_labels:
            raise DataError(
                f"metric: {name!r} needs labels but the eval split has none; use a "
                "fidelity metric (top1_agreement, cosine, mean_abs_diff) or add labels"
            )
        return spec
    user_fn = import_factory(name, key="metric")
    higher = True if recipe.metric_higher_is_better is None else recipe.metric_higher_is_better
    return MetricSpec(name, higher, False, _guarded(name, user_fn))


def _guarded(name: str, user_fn: Callable[..., Any]) -> MetricFn:
    """A user metric whose failure (or non-number) is a located error, not a crash."""

    def call(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
        try:
            with user_code():
                value = user_fn(outputs, labels)
        except Exception as exc:
            raise MetricError(
                f"metric: {name} raised {type(exc).__name__}: {str(exc)[:200]} (called with "
                f"outputs of shape {outputs.shape} and "
                + ("no labels" if labels is None else f"labels of shape {labels.shape}")
                + ")"
            ) from None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MetricError(
                f"metric: {name} returned {type(value).__name__} {str(value)[:40]!r}, not a number"
            ) from None
        if not math.isfinite(number):
            raise MetricError(f"metric: {name} returned {number}")
        return number

    return call


def fidelity(outputs: np.ndarray, reference: np.ndarray, task: Task) -> dict[str, float]:
    """How close the outputs stay to the original model's, whatever the task metric is."""
    values = {
        "cosine": cosine(outputs, None, reference),
        "mean_abs_diff": mean_abs_diff(outputs, None, reference),
        "max_abs_diff": max_abs_diff(outputs, None, reference),
    }
    if task == Task.CLASSIFICATION and outputs.ndim >= 2:
        values["top1_agreement"] = top1_agreement(outputs, None, reference)
    return values
