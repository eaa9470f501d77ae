"""MACs per ONNX node (batch 1), the per-layer view of `mcomp.onnx_macs.count_onnx_macs`.

It reuses that module's shape helpers rather than copying them, so per-layer figures and the
total in the run report always count the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcomp.onnx_macs import CONV_OPS, MATMUL_OPS, _conv_macs, _matmul_macs, _shapes

if TYPE_CHECKING:
    import onnx


def node_macs_by_name(model: onnx.ModelProto) -> dict[str, int]:
    """{node name (or `#index` when unnamed): MACs of one sample} for Conv/MatMul-like nodes."""
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
        inferred = fixed  # counting what is known beats failing the whole table
    shapes = _shapes(inferred)
    result = {}
    for index, node in enumerate(inferred.graph.node):
        if node.op_type in CONV_OPS:
            result[node.name or f"#{index}"] = _conv_macs(node, shapes)
        elif node.op_type in MATMUL_OPS:
            result[node.name or f"#{index}"] = _matmul_macs(node, shapes)
    return result
