"""Bias correction: undo the mean output shift that rounding the weights introduces.

Rounding a layer's weights to int8 changes its expected output by E[ΔW · x] = ΔW · E[x]
per output channel (ΔW = W_fp32 − W_int8·scale), a systematic error that no later layer
removes; it is largest where a channel has few weights, as in depthwise convolutions.
Nagel et al. ("Data-Free Quantization Through Weight Equalization and Bias Correction",
ICCV 2019) correct it by adding ΔW · E[x] to the bias; NNCF's fast bias correction does the
same from calibration data. Here E[x] is the per-channel mean of the layer's fp32 input over
the calibration samples (statistics.py), and the corrected bias is re-quantized with the
bias scale onnxruntime chose (input scale × weight scale), so the int8 kernels are unchanged.

Applies to Conv and Gemm nodes of a static QDQ model whose weights and bias are quantized
initializers; a Conv without a bias gets one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mcomp.compressors.quantize.statistics import TensorStatistics

INT32 = (-(2**31), 2**31 - 1)


def correct_biases(quantized, prepared, stats: dict[str, TensorStatistics]) -> dict[str, Any]:
    """Shift the biases of `quantized` (a QDQ ModelProto, edited in place) by the weight
    error's mean effect; `prepared` is the fp32 model it was quantized from. Returns facts
    for the report: corrected nodes and the largest relative shift."""
    from onnx import numpy_helper

    fp32_nodes = {node.name: node for node in prepared.graph.node if node.name}
    fp32_weights = {init.name: init for init in prepared.graph.initializer}
    arrays = {init.name: init for init in quantized.graph.initializer}
    producers = {out: node for node in quantized.graph.node for out in node.output}
    corrected, largest = [], 0.0
    for node in list(quantized.graph.node):
        source = fp32_nodes.get(node.name)
        if node.op_type not in ("Conv", "Gemm") or source is None or source.op_type != node.op_type:
            continue
        weight_dq = producers.get(node.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            continue
        if source.input[1] not in fp32_weights or weight_dq.input[0] not in arrays:
            continue
        input_stats = stats.get(source.input[0])
        if input_stats is None:
            continue
        w_fp32 = numpy_helper.to_array(fp32_weights[source.input[1]]).astype(np.float64)
        w_int8 = _dequantize(weight_dq, arrays)
        if w_int8 is None or w_int8.shape != w_fp32.shape:
            continue
        shift = _output_shift(node, w_fp32 - w_int8, input_stats)
        if shift is None:
            continue
        bias = _fp32_bias(source, fp32_weights, len(shift))
        if _set_bias(quantized, node, bias + shift, producers, arrays, weight_dq):
            corrected.append(node.name)
            scale = float(np.abs(bias).max()) or 1.0
            largest = max(largest, float(np.abs(shift).max()) / scale)
    return {"nodes": len(corrected), "largest_relative_shift": round(largest, 6)}


def _dequantize(dq_node, arrays) -> np.ndarray | None:
    from onnx import helper, numpy_helper

    names = list(dq_node.input) + [""] * 2
    if any(n and n not in arrays for n in names[:3]):
        return None
    values = numpy_helper.to_array(arrays[names[0]]).astype(np.float64)
    scale = numpy_helper.to_array(arrays[names[1]]).astype(np.float64)
    zero = numpy_helper.to_array(arrays[names[2]]).astype(np.float64) if names[2] else 0.0
    axis = next((helper.get_attribute_value(a) for a in dq_node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and scale.size > 1:
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return (values - zero) * scale


def _output_shift(node, delta: np.ndarray, input_stats: TensorStatistics) -> np.ndarray | None:
    """ΔW · E[x] per output channel."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        mean = input_stats.channel_mean()
        groups = attrs.get("group", 1)
        out_channels, per_group = delta.shape[0], delta.shape[1]
        if mean is None or mean.size != per_group * groups:
            return None
        summed = delta.reshape(out_channels, per_group, -1).sum(axis=2)  # over the kernel
        inputs = mean.reshape(groups, per_group)[
            np.arange(out_channels) // (out_channels // groups)
        ]
        return (summed * inputs).sum(axis=1)
    mean = input_stats.last_axis_mean()
    if attrs.get("transA", 0) or mean is None:
        return None
    weight = delta.T if attrs.get("transB", 0) else delta  # (K, N)
    return mean @ weight if mean.size == weight.shape[0] else None


def _fp32_bias(source, fp32_weights, channels: int) -> np.ndarray:
    from onnx import numpy_helper

    if len(source.input) > 2 and source.input[2] in fp32_weights:
        return numpy_helper.to_array(fp32_weights[source.input[2]]).astype(np.float64).reshape(-1)
    return np.zeros(channels)


def _set_bias(quantized, node, bias, producers, arrays, weight_dq) -> bool:
    """Write `bias` as the node's quantized bias (int32, scale = input scale × weight
    scale, as onnxruntime's quantizer makes it); adds a bias input to a Conv without one."""
    from onnx import helper, numpy_helper

    bias_dq = producers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias_dq is not None:
        if bias_dq.op_type != "DequantizeLinear" or bias_dq.input[0] not in arrays:
            return False
        scale = numpy_helper.to_array(arrays[bias_dq.input[1]]).astype(np.float64)
        target = arrays[bias_dq.input[0]]
        values = np.clip(np.round(bias / scale), *INT32).astype(np.int32)
        target.CopyFrom(numpy_helper.from_array(values.reshape(tuple(target.dims)), target.name))
        return True
    if node.op_type != "Conv":
        return False
    input_dq = producers.get(node.input[0])
    if (
        input_dq is None
        or input_dq.op_type != "DequantizeLinear"
        or input_dq.input[1] not in arrays
    ):
        return False
    input_scale = float(numpy_helper.to_array(arrays[input_dq.input[1]]).reshape(-1)[0])
    weight_scale = numpy_helper.to_array(arrays[weight_dq.input[1]]).astype(np.float64).reshape(-1)
    scale = (input_scale * weight_scale * np.ones_like(bias)).astype(np.float32)
    name = f"{node.name}_corrected_bias"
    values = np.clip(np.round(bias / scale), *INT32).astype(np.int32)
    quantized.graph.initializer.extend(
        [
            numpy_helper.from_array(values, f"{name}_quantized"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(values), f"{name}_zero_point"),
        ]
    )
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
        [name],
        name=f"{name}_DequantizeLinear",
        axis=0,
    )
    index = list(quantized.graph.node).index(node)
    quantized.graph.node.insert(index, dq)
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    return True
