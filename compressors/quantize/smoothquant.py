"""SmoothQuant on the fp32 graph before int8 (Xiao et al., "SmoothQuant: Accurate and
Efficient Post-Training Quantization for Large Language Models", ICML 2023).

A few input channels of a MatMul/Gemm activation (after LayerNorm in transformers, or any
tensor with a handful of large channels) set its one int8 scale, and every other channel
gets a few levels. Per input channel j, s_j = max|X_j|^α / max|W_j|^(1−α); X·W equals
(X / s)·(s W): the weight rows take the activation's range, which per-channel weights
quantize well. The division by s is folded into what produces X where that is exact and X
has no other reader — the scale and bias of a LayerNormalization, the constants of a
decomposed LayerNorm's Mul(γ) → Add(β), or the columns of a preceding MatMul (+ bias Add);
otherwise a Mul by 1/s is inserted. MatMuls reading one tensor (attention's Q, K, V
projections) share one s. The fp32 function is unchanged up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mcomp.compressors.quantize.statistics import TensorStatistics

SCALE_LIMIT = 1e4  # s within [1/limit, limit]: keeps weights far from float32 limits


@dataclass
class Group:
    """MatMul/Gemm nodes with constant weights reading one activation tensor."""

    tensor: str
    nodes: list  # (node, weight name, rows on axis 0 when True else axis 1)


def smoothing_groups(model, excluded: set[str] | None = None) -> list[Group]:
    """MatMul (2-D constant weight) and Gemm (constant B, no transA) nodes by input tensor."""
    from onnx import helper

    inits = {init.name: init for init in model.graph.initializer}
    excluded = excluded or set()
    groups: dict[str, Group] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.name in excluded:
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        if len(inits[node.input[1]].dims) != 2 or node.input[0] in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0):
            continue
        rows_first = not attrs.get("transB", 0)  # weight rows are input channels
        group = groups.setdefault(node.input[0], Group(node.input[0], []))
        group.nodes.append((node, node.input[1], rows_first))
    return list(groups.values())


def has_outliers(entry: TensorStatistics | None, ratio: float) -> bool:
    """Whether the tensor's largest channel |max| is `ratio` times its median channel's."""
    if entry is None or entry.last_absmax is None or entry.last_absmax.size < 2:
        return False
    median = float(np.median(entry.last_absmax))
    return median > 0 and float(entry.last_absmax.max()) >= ratio * median


def smooth(
    model,
    stats: dict[str, TensorStatistics],
    alpha: float,
    *,
    excluded: set[str] | None = None,
    outlier_ratio: float | None = None,
) -> dict[str, Any]:
    """Apply SmoothQuant with `alpha` to `model` (a ModelProto, edited in place), channel
    ranges from `stats` (of this model); with `outlier_ratio`, only inputs with outlier
    channels. Returns facts: groups smoothed, folded vs Mul nodes inserted (`mul_nodes`:
    their names, to be left in float)."""
    from onnx import numpy_helper

    arrays = {init.name: init for init in model.graph.initializer}
    facts = {"alpha": alpha, "inputs": 0, "nodes": 0, "folded": 0, "mul_inserted": 0}
    float_muls: list[str] = []
    for group in smoothing_groups(model, excluded):
        entry = stats.get(group.tensor)
        if entry is None or entry.last_absmax is None:
            continue
        if outlier_ratio is not None and not has_outliers(entry, outlier_ratio):
            continue
        weights = {name: numpy_helper.to_array(arrays[name]) for _, name, _ in group.nodes}
        if any(
            w.shape[0 if rows else 1] != entry.last_absmax.size
            for (_, name, rows), w in zip(group.nodes, weights.values(), strict=True)
        ):
            continue
        scale = _smoothing_scale(entry.last_absmax, group, weights, alpha)
        for _, name, rows in group.nodes:
            shape = (-1, 1) if rows else (1, -1)
            _store(arrays[name], weights[name] * scale.reshape(shape))
        if _fold_division(model, group, scale, arrays):
            facts["folded"] += 1
        else:
            float_muls.append(_insert_division(model, group, scale))
            facts["mul_inserted"] += 1
        facts["inputs"] += 1
        facts["nodes"] += len(group.nodes)
    facts["mul_nodes"] = float_muls
    return facts


def _smoothing_scale(activation_max, group: Group, weights, alpha: float) -> np.ndarray:
    weight_max = np.zeros_like(activation_max, dtype=np.float64)
    for _, name, rows in group.nodes:
        per_row = np.abs(weights[name]).max(axis=1 if rows else 0)
        weight_max = np.maximum(weight_max, per_row)
    live = (activation_max > 0) & (weight_max > 0)
    scale = np.ones_like(weight_max)
    scale[live] = activation_max[live] ** alpha / weight_max[live] ** (1 - alpha)
    return np.clip(scale, 1 / SCALE_LIMIT, SCALE_LIMIT)


def _store(init, value: np.ndarray) -> None:
    from onnx import numpy_helper

    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))


def _fold_division(model, group: Group, scale: np.ndarray, arrays) -> bool:
    """Divide the group's input by `scale` (last axis) inside the nodes that produce it;
    False (and nothing changed) where that cannot be done exactly."""
    edits = _division_plan(model, group, scale.size, arrays)
    if edits is None:
        return False
    from onnx import numpy_helper

    for name, how in edits:
        value = numpy_helper.to_array(arrays[name]).astype(np.float64)
        if how == "columns":
            _store(arrays[name], value / scale.reshape(1, -1))
        elif how == "rows":
            _store(arrays[name], value / scale.reshape(-1, 1))
        else:  # a per-last-axis constant, broadcast to (..., K) when it was a scalar
            shape = (*value.shape[:-1], scale.size) if value.ndim else (scale.size,)
            _store(arrays[name], np.broadcast_to(value, shape) / scale)
    return True


def _division_plan(model, group: Group, channels: int, arrays) -> list[tuple[str, str]] | None:
    """The constants to divide, walking back from `tensor` through bias Adds to a Mul,
    LayerNormalization or MatMul/Gemm with constant operands; None where the walk fails."""
    from onnx import helper

    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {value.name for value in model.graph.output}
    edits: list[tuple[str, str]] = []
    tensor, allowed = group.tensor, len(group.nodes)  # the group's input: read by it only
    while True:
        node = producers.get(tensor)
        if node is None or tensor in outputs or readers.get(tensor, 0) > allowed:
            return None
        allowed = 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        own = [n for n in node.input[1:] if n in arrays and readers.get(n, 0) == 1]
        if node.op_type == "LayerNormalization" and attrs.get("axis", -1) == -1:
            return edits + [(n, "vector") for n in own] if len(own) == len(node.input) - 1 else None
        if node.op_type in ("Add", "Mul"):
            const = [n for n in node.input if n in arrays]
            if len(const) != 1 or const[0] not in own or not _last_axis(arrays[const[0]], channels):
                return None
            edits.append((const[0], "vector"))
            if node.op_type == "Mul":
                return edits
            tensor = node.input[0] if node.input[1] == const[0] else node.input[1]
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "MatMul" and weight in own and len(arrays[weight].dims) == 2:
            return edits + [(weight, "columns")]
        return None


def _last_axis(init, channels: int) -> bool:
    """A constant that broadcasts along the last axis only: a scalar, (K,) or (1, .., K)."""
    dims = list(init.dims)
    return all(d == 1 for d in dims) or (dims[-1] == channels and all(d == 1 for d in dims[:-1]))


def _insert_division(model, group: Group, scale: np.ndarray) -> str:
    """Insert Mul(X, 1/s) in front of the group; returns its name. It must stay float in
    static QDQ: quantizing its input would quantize X with its outliers after all."""
    from onnx import helper, numpy_helper

    name = f"{group.tensor}_smoothed"
    factor = numpy_helper.from_array((1 / scale).astype(np.float32), f"{name}_inverse_scale")
    model.graph.initializer.append(factor)
    first = min(list(model.graph.node).index(node) for node, _, _ in group.nodes)
    mul = helper.make_node("Mul", [group.tensor, factor.name], [name], name=f"{name}_Mul")
    model.graph.node.insert(first, mul)
    for node, _, _ in group.nodes:
        node.input[0] = name
    return mul.name
