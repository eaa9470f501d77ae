"""Multiply-accumulate counts of an ONNX graph at batch 1, from ONNX shape inference.

Counts the ops that carry almost all the work of CNNs, MLPs and transformers: Conv (and its
int8 forms), Gemm and MatMul (and their int8 forms). Element-wise ops are left out, as
torch's flop counter leaves them out, so torch and ONNX figures compare.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}
MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "MatMulNBits"}


def count_onnx_macs(model: onnx.ModelProto) -> int:
    """Total MACs of one sample; unknown (symbolic) dims count as 1."""
    return sum(node_macs_by_name(model).values())


def node_macs_by_name(model: onnx.ModelProto) -> dict[str, int]:
    """{node name (or `#index` when unnamed): MACs of one sample} for Conv/MatMul-like nodes;
    the per-layer view (inspect, int8 proof) and the report's total count the same way."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed)
    except Exception:
        inferred = fixed  # counting what is known beats failing the whole measurement
    shapes = _shapes(inferred)
    result = {}
    for index, node in enumerate(inferred.graph.node):
        if node.op_type in CONV_OPS:
            result[node.name or f"#{index}"] = _conv_macs(node, shapes)
        elif node.op_type in MATMUL_OPS:
            result[node.name or f"#{index}"] = _matmul_macs(node, shapes)
    return result


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _conv_macs(node, shapes: dict[str, list[int]]) -> int:
    weight = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
    out, w = shapes.get(node.output[0]), shapes.get(weight)
    if not out or not w:
        return 0
    # each output element sums Cin/groups × kernel products
    return math.prod(out[1:]) * math.prod(w[1:])


def _matmul_macs(node, shapes: dict[str, list[int]]) -> int:
    a_name = node.input[0]
    out, a = shapes.get(node.output[0]), shapes.get(a_name)
    if not out or not a:
        return 0
    k = a[-1]
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
    return math.prod(out) * k
