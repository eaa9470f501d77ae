"""Measure a model the same way before and after every stage.

Sizes are those of the deployable artifact, the ONNX file (for a torch model: its fp32
export), raw and deflate-compressed, so that sparsity and weight sharing show. Latency is
onnxruntime CPU latency for every model, the fp32 baseline included, so deltas compare like
with like; it is not timed here but for all models together at the end of the run
(`mcomp.run.latency`), since figures timed minutes apart on a shared CPU are not comparable.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from mcomp.measure.evaluate import evaluate_all
from mcomp.measure.onnx_macs import count_macs, sample_shapes
from mcomp.model.state import ModelKind, ModelState

if TYPE_CHECKING:
    import onnx

    from mcomp.stage import StageContext

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def onnx_form(state: ModelState) -> onnx.ModelProto:
    """The ONNX model of a state; a torch module is exported once and cached on the state."""
    if state.kind == ModelKind.ONNX:
        return state.onnx_model
    if state.onnx_cache is None:
        from mcomp.model.convert import torch_to_onnx

        state.onnx_cache = torch_to_onnx(state)
    return state.onnx_cache


def measure_model(state: ModelState, ctx: StageContext) -> dict[str, Any]:
    """All report metrics of one model state; the latency fields stay None until the run
    times every model side by side (`mcomp.run.latency`)."""
    model = onnx_form(state)
    raw = model.SerializeToString()
    params, nonzero = _torch_params(state) if state.kind == ModelKind.TORCH else onnx_params(model)
    metric, fidelity = evaluate_all(state, ctx)
    macs = count_macs(model, sample_shapes(state.inputs, ctx.datasets))
    return {
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": round(1.0 - nonzero / params, 6) if params else 0.0,
        "size_bytes": len(raw),
        "size_compressed_bytes": len(zlib.compress(raw, 9)),
        # counted on the ONNX form for torch models too: one counter for every stage, and
        # it counts what torch's flop counter misses (recurrent layers run as one aten op)
        "macs": macs.total,
        # compute nodes whose shapes stayed unknown (counted as 0), so a low count says why
        "macs_uncounted": macs.uncounted,
        "metric_name": ctx.metric.name,
        "metric": metric,
        "fidelity": fidelity,
        "latency_ms_b1": None,
        "latency_ms_batch": None,
        "latency_batch": None,
    }


def _torch_params(state: ModelState) -> tuple[int, int]:
    import torch

    params = nonzero = 0
    for tensor in state.module.parameters():
        params += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return params, nonzero


def onnx_params(model: onnx.ModelProto) -> tuple[int, int]:
    """Weights of an ONNX graph: float and int8 initializers (or Constant nodes) and quantized
    (int32) biases; scales, zero points, shape constants and scalar constants (a clamp bound,
    an epsilon: torch counts no parameter for them) are not parameters."""
    from onnx import numpy_helper

    not_params, dq_inputs, dynamic_scales = set(), set(), set()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            not_params.update(node.input[1:])
            if node.op_type == "DequantizeLinear":
                dq_inputs.add(node.input[0])
        elif node.op_type in ("MatMulInteger", "ConvInteger"):
            not_params.update(node.input[2:])  # zero points
        elif node.op_type == "DynamicQuantizeMatMul":
            not_params.update(node.input[2:4])  # weight scale and zero point
        elif node.op_type == "DynamicQuantizeLinear":
            dynamic_scales.add(node.output[1])
    for node in model.graph.node:  # dynamic quantization: activation scale x weight scale
        if node.op_type == "Mul" and dynamic_scales.intersection(node.input):
            not_params.update(node.input)
    # exporters such as paddle2onnx store every weight as a Constant node, not an initializer
    tensors = [(init.name, init) for init in model.graph.initializer] + [
        (node.output[0], attribute.t)
        for node in model.graph.node
        if node.op_type == "Constant"
        for attribute in node.attribute
        if attribute.name == "value"
    ]
    params = nonzero = 0
    for name, tensor in tensors:
        if name in not_params:
            continue
        array = numpy_helper.to_array(tensor)
        if array.ndim == 0 and array.dtype.kind == "f":
            continue
        is_weight = array.dtype.kind == "f" or array.dtype in (np.int8, np.uint8)
        if is_weight or (array.dtype == np.int32 and name in dq_inputs):
            params += array.size
            nonzero += int(np.count_nonzero(array))
    return params, nonzero
