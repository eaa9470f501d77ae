"""Activation ranges learned by quantization-aware training, applied as onnxruntime
`TensorQuantOverrides` on the prepared ONNX model.

Mapping modules to ONNX tensors: after onnxruntime's pre-processing, each Conv/Gemm/MatMul
node whose weight initializer equals a trained module's weight (Gemm as is; MatMul
transposed) is that module, and the node's first input is the tensor the module's input
range belongs to. Matching by weight values survives renaming by the exporter and by graph
optimisation; modules with no match are listed in `details.qat.unmapped`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mcomp.stage import QatRange

# onnxruntime gives these ops' output the quantization parameters of their input, so a range
# learned for a Linear after MaxPool → Flatten must also be set on the MaxPool's input
SAME_SCALE_OPS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"}


def tensor_overrides(prepared, learned: dict[str, QatRange]) -> tuple[dict, dict[str, Any]]:
    """onnxruntime `TensorQuantOverrides` for the prepared ONNX model, and mapping facts."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in prepared.graph.initializer}
    overrides: dict[str, list[dict]] = {}
    mapped: dict[str, str] = {}
    for node in prepared.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in weights
        ):
            continue
        array = numpy_helper.to_array(weights[node.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0)):
            array = array.T
        for name, entry in learned.items():
            if (
                name in mapped
                or entry.weight.shape != array.shape
                or not np.allclose(entry.weight, array, rtol=1e-5, atol=1e-7)
            ):
                continue
            for tensor in _same_scale_chain(prepared, node.input[0]):
                overrides[tensor] = [
                    {"rmin": np.float32(entry.low), "rmax": np.float32(entry.high)}
                ]
            mapped[name] = node.input[0]
            break
    facts = {
        "mapped": mapped,
        "unmapped": sorted(set(learned) - set(mapped)),
        "ranges": {
            mapped[n]: [round(learned[n].low, 6), round(learned[n].high, 6)] for n in mapped
        },
    }
    return overrides, facts


def _same_scale_chain(prepared, tensor: str) -> list[str]:
    """`tensor` and the tensors upstream of it through scale-sharing ops (SAME_SCALE_OPS)."""
    producers = {out: node for node in prepared.graph.node for out in node.output}
    chain = [tensor]
    node = producers.get(tensor)
    while node is not None and node.op_type in SAME_SCALE_OPS and node.input:
        chain.append(node.input[0])
        node = producers.get(node.input[0])
    return chain
