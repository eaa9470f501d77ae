"""Low-bit variants of the quantize stage: 4-bit weights and power-of-two scales.

    - quantize: {mode: weight4, weight4: {block_size: 32, symmetric: true}}   # or bits: 4
    - quantize: {mode: static, scale: pow2}

`weight4` is weight-only: every MatMul with a constant weight (Gemm is rewritten to
MatMul + Add first) becomes onnxruntime's `MatMulNBits` (com.microsoft) with 4-bit weights,
one scale (and zero point when asymmetric) per `block_size` weights along the input axis;
activations stay float. It suits Linear-heavy models (MLPs, transformers); convolutions are
left alone. Library: `onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`.

`scale: pow2` rewrites a static QDQ model so that every scale is a power of two (fixed-point
hardware multiplies by shifting). Activation scales go to the nearest power of two (in log
space: clipping at most a factor sqrt(2) of the range, like percentile calibration); weight
scales go *up* to the next power of two and the int8 weights are re-quantized with the new
scale, so no weight is clipped; bias scales are recomputed as input scale x weight scale (what
onnxruntime's int8 kernels assume) and the int32 biases re-quantized.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcomp.errors import StageError

if TYPE_CHECKING:
    from mcomp.compressors.quantize.options import Weight4Options

INT_RANGES = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


def quantize_weight4(prepared, options: Weight4Options, folder: Path):
    """MatMul weights to 4 bits (MatMulNBits); returns the model."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from mcomp.compressors.quantize.prepare import gemm_to_matmul, working_directory

    # its per-node INFO lines would flood stderr, which carries only mcomp's own lines
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = gemm_to_matmul(prepared)
    with working_directory(folder):
        try:
            quantizer = MatMulNBitsQuantizer(
                model, bits=4, block_size=options.block_size, is_symmetric=options.symmetric
            )
            quantizer.process()
        except Exception as exc:
            raise StageError(
                f"quantize: onnxruntime 4-bit weight quantization failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            ) from None
    result = quantizer.model.model
    if not any(node.op_type == "MatMulNBits" for node in result.graph.node):
        raise StageError(
            "quantize: mode weight4 found no MatMul/Gemm with a constant weight "
            "to quantize; for conv nets use `mode: static`"
        )
    return result


def pow2(scale: np.ndarray, *, up: bool) -> np.ndarray:
    exponent = np.log2(np.maximum(scale.astype(np.float64), np.finfo(np.float32).tiny))
    exponent = np.ceil(exponent - 1e-9) if up else np.round(exponent)
    return np.exp2(exponent).astype(scale.dtype)


def round_scales_pow2(model):
    """Every QuantizeLinear/DequantizeLinear scale of a QDQ model as a power of two."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    new: dict[str, np.ndarray] = {}
    dq_by_output = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in arrays:
            new[node.input[1]] = pow2(arrays[node.input[1]], up=False)
        if node.op_type == "DequantizeLinear":
            dq_by_output[node.output[0]] = node
    for node in dq_by_output.values():  # weights: scale up, re-quantize (never clipped)
        values, scale = node.input[0], node.input[1]
        if values in arrays and scale in arrays and arrays[values].dtype != np.int32:
            new[scale] = pow2(arrays[scale], up=True)
            new[values] = _requantize(
                arrays[values], arrays[scale], new[scale], _zero_point(node, arrays), _axis(node)
            )
    for consumer in model.graph.node:  # biases: input scale x weight scale
        biases = [dq_by_output.get(name) for name in consumer.input[2:3]]
        if (
            not biases
            or biases[0] is None
            or arrays.get(biases[0].input[0]) is None
            or arrays[biases[0].input[0]].dtype != np.int32
        ):
            continue
        bias = biases[0]
        x_dq, w_dq = dq_by_output.get(consumer.input[0]), dq_by_output.get(consumer.input[1])
        if x_dq is None or w_dq is None:
            continue
        scale = (
            new.get(x_dq.input[1], arrays[x_dq.input[1]])
            * new.get(w_dq.input[1], arrays[w_dq.input[1]])
        ).astype(np.float32)
        new[bias.input[1]] = scale.reshape(arrays[bias.input[1]].shape)
        new[bias.input[0]] = _requantize(
            arrays[bias.input[0]], arrays[bias.input[1]], new[bias.input[1]], None, 0
        )
    for init in model.graph.initializer:
        if init.name in new:
            init.CopyFrom(
                numpy_helper.from_array(new[init.name].astype(arrays[init.name].dtype), init.name)
            )
    return model


def _zero_point(node, arrays) -> np.ndarray | None:
    return arrays.get(node.input[2]) if len(node.input) > 2 else None


def _axis(node) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)


def _requantize(
    values: np.ndarray, old: np.ndarray, new: np.ndarray, zero_point: np.ndarray | None, axis: int
) -> np.ndarray:
    """`values` quantized with scale `old` → the same reals quantized with scale `new`."""
    shape = [1] * values.ndim
    if old.ndim == 1 and old.size > 1:
        shape[axis] = old.size
    zp = 0 if zero_point is None else zero_point.astype(np.float64).reshape(shape)
    real = (values.astype(np.float64) - zp) * old.astype(np.float64).reshape(shape)
    low, high = INT_RANGES[values.dtype]
    requantized = np.round(real / new.astype(np.float64).reshape(shape)) + zp
    return np.clip(requantized, low, high).astype(values.dtype)
