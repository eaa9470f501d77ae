"""Dtype names shared by numpy, torch and ONNX, and ONNX input signatures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcomp.recipe.schema import InputSpec

if TYPE_CHECKING:
    import onnx

# ONNX TensorProto element types → our dtype names.
ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


def onnx_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph's real inputs (not initializers), shape without the batch axis; symbolic → -1."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        inputs.append(
            InputSpec(
                name=value.name, shape=dims[1:], dtype=ONNX_DTYPES.get(tensor.elem_type, "float32")
            )
        )
    return inputs
