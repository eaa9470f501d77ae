"""Another calibration method's activation ranges on a model onnxruntime already quantized,
without quantizing it again.

Calibration methods (minmax, percentile, mse, entropy) differ only in the ranges they give
each activation; with the same nodes, types and options, onnxruntime's static QDQ quantizer
makes the same graph and the same int8 weights whatever the ranges. What the ranges decide
are the scale and zero point of each activation (onnxruntime's `{tensor}_scale` /
`{tensor}_zero_point` initializers, shared by the Q/DQ pairs of that tensor and of the
tensors that reuse its parameters) and each int32 bias, quantized with its input's scale
times its weight's scale. `rescale` rewrites exactly those. `calibration.method: auto`
quantizes twice and the fallback's range alternatives once per method; on the PP-OCR
detector each of those onnxruntime calls took 3.3 s of a 24 s stage, mostly its Python
loops over every node for every tensor, where this takes a few milliseconds per tensor.

It recomputes with onnxruntime's own `compute_scale_zp` and bias formula and first checks
them against the model it starts from: every scale, zero point and bias recomputed from
that model's own ranges must equal what onnxruntime wrote, bit for bit. Anything it does not
recognise — an activation Q/DQ whose parameters it cannot map to a range, a float16 bias
or weight, range overrides with more than `rmin`/`rmax`, a weight scale that onnxruntime
enlarged for its int32 bias (dead channels) which it cannot reproduce — returns None, and
the caller runs onnxruntime.
tests/test_quantize_rescale.py checks the result against onnxruntime's own quantization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

# beyond this |bias| / bias scale, onnxruntime may enlarge the weight's scale so that the
# int32 bias does not clip (`_adjust_weight_scale_for_int32_bias`): that weight's scale is
# then derived from its fp32 values, as onnxruntime does, and checked against the base
INT32_MARGIN = 2.0**30
BIAS_SUFFIX = "_quantized"  # onnxruntime's TENSOR_NAME_QUANT_SUFFIX


def rescale(
    base: onnx.ModelProto,
    base_ranges: dict[str, list[dict]],
    ranges: dict[str, list[dict]],
    fp32: onnx.ModelProto,
    *,
    activation_type: int,
    symmetric: bool,
    weight_symmetric: bool,
    reduce_range: bool,
) -> onnx.ModelProto | None:
    """`base` (onnxruntime's QDQ output for `base_ranges`, as TensorQuantOverrides) with the
    activation parameters and int32 biases onnxruntime gives for `ranges` instead; `fp32`
    is the model both were quantized from, `activation_type` the ONNX element type of the
    activations, `weight_symmetric` and `reduce_range` the weights' settings onnxruntime was
    given. None where the result could differ from onnxruntime's own."""
    if set(base_ranges) != set(ranges) or not all(
        _plain(base_ranges[name]) and _plain(ranges[name]) for name in ranges
    ):
        return None
    try:
        compute = _parameters(activation_type, symmetric)
    except (ImportError, TypeError):
        return None
    initializers = {init.name: init for init in base.graph.initializer}
    owners = _activation_owners(base, initializers, ranges)
    biases = _biases(base, initializers, fp32)
    if owners is None or biases is None:
        return None
    from onnx import numpy_helper

    weights = {"symmetric": weight_symmetric, "reduce_range": reduce_range}

    def params(source: dict[str, list[dict]]):
        return {name: compute(source[name][0]) for name in owners}

    old, new = params(base_ranges), params(ranges)
    for name, (zero, scale) in old.items():  # onnxruntime's own values, reproduced exactly
        if not (
            _same(numpy_helper.to_array(initializers[f"{name}_zero_point"]), zero)
            and _same(numpy_helper.to_array(initializers[f"{name}_scale"]), scale)
        ):
            return None
    updates = {}
    for bias in biases:
        if bias.owner not in old or bias.tensor not in ranges:
            return None
        own = compute(base_ranges[bias.tensor][0])[1], compute(ranges[bias.tensor][0])[1]
        pair = old[bias.owner][1], new[bias.owner][1]
        found = _rescaled_bias(bias, initializers, pair, own, weights)
        if found is None:
            return None
        updates.update(found)
    for name, (zero, scale) in new.items():
        updates[f"{name}_zero_point"], updates[f"{name}_scale"] = zero, scale
    import onnx

    result = onnx.ModelProto()
    result.CopyFrom(base)
    for init in result.graph.initializer:
        if init.name in updates:
            _overwrite(init, updates[init.name])
    return result


def _plain(entry: list[dict]) -> bool:
    return len(entry) == 1 and set(entry[0]) == {"rmin", "rmax"}


def _parameters(activation_type: int, symmetric: bool):
    """(zero point, scale) of one tensor's range, as onnxruntime's QDQ quantizer computes
    them (`calc_quant_params` without overrides beyond rmin/rmax)."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(activation_type, reduce_range=False, symmetric=symmetric)

    def compute(entry: dict):
        zero, scale = compute_scale_zp(entry["rmin"], entry["rmax"], qmin, qmax, symmetric)
        return np.asarray(zero).squeeze(), np.asarray(scale).squeeze()

    return compute


def _activation_owners(base, initializers, ranges) -> set[str] | None:
    """The tensors whose `{name}_scale` / `{name}_zero_point` the activation Q/DQ nodes of
    `base` read; None when one reads parameters of another name."""
    owners = set()
    for node in base.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.input[0] in initializers:
            continue  # a weight's or a bias's (weights keep their scales)
        scale = node.input[1]
        name = scale[: -len("_scale")] if scale.endswith("_scale") else None
        if (
            name is None
            or name not in ranges
            or len(node.input) < 3
            or node.input[2] != f"{name}_zero_point"
            or node.input[2] not in initializers
            or scale not in initializers
            or tuple(initializers[scale].dims)
        ):
            return None
        owners.add(name)
    return owners


class _Bias:
    """One int32 bias of `base`: its initializers, its fp32 values, the scales it is the
    product of (input activation, weight) and the weight's fp32 values and channel axis."""

    def __init__(self, values: str, scale: str, fp32: np.ndarray, owner: str, weight_dq) -> None:
        self.values, self.scale, self.fp32, self.owner = values, scale, fp32, owner
        self.weight_values, self.weight_scale = weight_dq.input[0], weight_dq.input[1]
        self.weight_zero = weight_dq.input[2] if len(weight_dq.input) > 2 else ""
        self.weight_fp32: np.ndarray | None = None
        # the fp32 tensor the node reads: onnxruntime decides whether to enlarge the weight's
        # scale from that tensor's own parameters, while the bias scale takes those of the
        # Q/DQ pair it reads, which after a MaxPool are its input's (CRAFT's VGG convs)
        self.tensor = ""
        self.axis = 1
        self.beta = 1.0


def _biases(base, initializers, fp32) -> list[_Bias] | None:
    """Every int32 bias of `base` (a DequantizeLinear of an int32 initializer feeding input
    2 of a node whose input 0 and 1 come from an activation DQ and a weight DQ); None for one
    that does not fit that pattern."""
    from onnx import TensorProto, helper, numpy_helper

    fp32_initializers = {init.name: init for init in fp32.graph.initializer}
    fp32_nodes = {node.name: node for node in fp32.graph.node if node.name}
    producers = {out: node for node in base.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in base.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    biases = []
    for node in base.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        if initializers[node.input[0]].data_type != TensorProto.INT32:
            continue
        users = consumers.get(node.output[0], [])
        source = fp32_initializers.get(node.input[0].removesuffix(BIAS_SUFFIX))
        if (
            source is None
            or source.data_location == TensorProto.EXTERNAL  # not loaded: not read here
            or len(users) != 1
            or len(users[0].input) < 3
            or users[0].input[2] != node.output[0]
            or source.data_type != TensorProto.FLOAT
        ):
            return None
        user = users[0]
        activation, weight = producers.get(user.input[0]), producers.get(user.input[1])
        if (
            activation is None
            or weight is None
            or activation.op_type != "DequantizeLinear"
            or weight.op_type != "DequantizeLinear"
            or weight.input[0] not in initializers
            or not activation.input[1].endswith("_scale")
        ):
            return None
        weight_source = fp32_initializers.get(weight.input[0].removesuffix(BIAS_SUFFIX))
        if (
            weight_source is None
            or weight_source.data_location == TensorProto.EXTERNAL
            or weight_source.data_type != TensorProto.FLOAT
            or len(weight.input) < 3
        ):
            return None
        bias = _Bias(
            node.input[0],
            node.input[1],
            numpy_helper.to_array(source),
            activation.input[1][: -len("_scale")],
            weight,
        )
        bias.weight_fp32 = numpy_helper.to_array(weight_source)
        if user.name not in fp32_nodes:
            return None
        bias.tensor = fp32_nodes[user.name].input[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in weight.attribute}
        bias.axis = attributes.get("axis", 1)
        if user.op_type == "Gemm":
            bias.beta = next(
                (helper.get_attribute_value(a) for a in user.attribute if a.name == "beta"), 1.0
            )
        biases.append(bias)
    return biases


def _rescaled_bias(bias: _Bias, initializers, pair, own, weights) -> dict | None:
    """The initializers of `bias` (and of its weight, where onnxruntime would enlarge the
    weight's scale differently) for the new input scales instead of the old ones: `pair`,
    (old, new) of the Q/DQ pair the node reads; `own`, those of its input tensor's own
    range. None where `base` is not reproduced from the old ones."""
    from onnx import numpy_helper

    old_input, new_input = pair

    base_scale = numpy_helper.to_array(initializers[bias.weight_scale])
    base_values = numpy_helper.to_array(initializers[bias.weight_values])
    zero = numpy_helper.to_array(initializers[bias.weight_zero]) if bias.weight_zero else None
    updates = {}
    new_scale = base_scale
    if any(_near_limit(bias, scale, base_scale) for scale in (*pair, *own)):
        # a channel whose scale onnxruntime enlarges for either input scale: from the
        # weights alone, then enlarged as onnxruntime does, checked against `base`
        initial = _initial_weight_scale(bias, base_values, zero, weights)
        if initial is None or not _same(_weight_scale(bias, own[0], initial), base_scale):
            return None
        new_scale = _weight_scale(bias, own[1], initial)
        if not _same(new_scale, base_scale):
            values = _requantize(bias, base_values, zero, base_scale, new_scale)
            if values is None:
                return None
            updates[bias.weight_values], updates[bias.weight_scale] = values, new_scale
    before = _quantize_bias(bias, old_input, base_scale)
    after = _quantize_bias(bias, new_input, new_scale)
    if before is None or after is None:
        return None
    if not (
        _same(numpy_helper.to_array(initializers[bias.values]), before[0])
        and _same(numpy_helper.to_array(initializers[bias.scale]), before[1])
    ):
        return None
    updates[bias.values], updates[bias.scale] = after
    return updates


def _near_limit(bias: _Bias, input_scale, weight_scale) -> bool:
    ratio = np.abs(np.asarray(bias.fp32, np.float64)) / (
        np.float64(np.asarray(input_scale).item()) * np.asarray(weight_scale, np.float64)
    )
    return bool(np.any(~np.isfinite(ratio)) or ratio.max(initial=0.0) >= INT32_MARGIN)


def _initial_weight_scale(bias: _Bias, values, zero, weights) -> np.ndarray | None:
    """The weight's scale from its fp32 values alone, as onnxruntime's QDQ quantizer
    computes it (`compute_data_quant_params` per channel, symmetric when per channel)."""
    from onnxruntime.quantization.quant_utils import compute_data_quant_params

    data = bias.weight_fp32
    qtype = _onnx_type(values)
    if qtype is None or zero is None or np.any(zero):
        return None  # onnxruntime enlarges only symmetric signed weights' scales
    if data.ndim == 0 or np.ndim(zero) == 0:
        _, scale = compute_data_quant_params(
            data.flatten(), qtype, weights["symmetric"], reduce_range=weights["reduce_range"]
        )
        return np.asarray(scale)
    scales = [
        compute_data_quant_params(
            data.take(i, bias.axis).ravel(), qtype, True, reduce_range=weights["reduce_range"]
        )[1]
        for i in range(data.shape[bias.axis])
    ]
    return np.asarray(scales)


def _requantize(bias: _Bias, values, zero, base_scale, new_scale) -> np.ndarray | None:
    """The int8 weights with the channels whose scale changed quantized again (onnxruntime's
    `quantize_nparray`), after checking that it gives `base`'s values for those channels."""
    from onnxruntime.quantization.quant_utils import quantize_nparray

    qtype = _onnx_type(values)
    if np.ndim(new_scale) == 0:
        again = quantize_nparray(qtype, bias.weight_fp32.flatten(), base_scale, zero)
        if not _same(again.reshape(values.shape), values):
            return None
        return quantize_nparray(qtype, bias.weight_fp32.flatten(), new_scale, zero).reshape(
            values.shape
        )
    result = values.copy()
    for i in np.flatnonzero(new_scale != base_scale):
        channel = bias.weight_fp32.take(i, bias.axis).flatten()
        shape = values.take(i, bias.axis).shape
        again = quantize_nparray(qtype, channel, base_scale[i], zero[i]).reshape(shape)
        if not _same(again, values.take(i, bias.axis)):
            return None
        index = [slice(None)] * values.ndim
        index[bias.axis] = i
        result[tuple(index)] = quantize_nparray(qtype, channel, new_scale[i], zero[i]).reshape(
            shape
        )
    return result


def _onnx_type(values: np.ndarray) -> int | None:
    """The ONNX element type of int8/int16 weights (the types whose scale onnxruntime
    enlarges for a bias), else None."""
    from onnx import TensorProto, helper

    qtype = helper.np_dtype_to_tensor_dtype(values.dtype)
    return qtype if qtype in (TensorProto.INT8, TensorProto.INT16) else None


def _quantize_bias(bias: _Bias, input_scale, weight_scale) -> tuple[np.ndarray, np.ndarray] | None:
    """(int32 values, scale) as onnxruntime's `quantize_bias_static_impl` makes them, clipped
    to int32 as it clips them (after a MaxPool the weight's scale is enlarged for the
    MaxPool output's own scale, the bias quantized with its input's: it can still clip);
    None for a zero scale."""
    scale = input_scale * weight_scale * bias.beta
    ratio = np.asarray(bias.fp32, np.float64) / np.asarray(scale, np.float64)
    if not np.all(np.isfinite(ratio)):
        return None
    limits = np.float64(np.iinfo(np.int32).min), np.float64(np.iinfo(np.int32).max)
    values = np.clip(ratio.round(), *limits).astype(np.int32).reshape(bias.fp32.shape)
    return values, np.asarray(scale, dtype=bias.fp32.dtype).reshape(-1)


def _weight_scale(bias: _Bias, input_scale, initial: np.ndarray) -> np.ndarray:
    """The weight's scale as onnxruntime leaves it for `input_scale`: `initial` (the scale
    of its values alone) enlarged where input scale × weight scale is too small for the
    int32 bias (its `_adjust_weight_scale_for_int32_bias`, re-done here: on the PP-OCR
    detector a dead channel with weights near 1e-35 takes it on every quantization)."""
    epsilon = 1.0001
    qrange = np.float64(2**31 - 1) - np.float64(-(2**31) + 1)
    scale = np.array(initial, copy=True)
    s_in = np.float64(np.asarray(input_scale).item())
    if scale.ndim == 0:
        absmax = max(abs(min(float(bias.fp32.min()), 0.0)), abs(max(float(bias.fp32.max()), 0.0)))
        smallest = epsilon * (2.0 * absmax) / qrange
        candidate = s_in * np.float64(scale.item())
        if 0.0 < candidate < smallest:
            scale = (np.float64(scale.item()) * (smallest / candidate)).astype(scale.dtype)
        return scale
    for i in range(scale.shape[0]):
        # float32 until the division, as onnxruntime computes it
        smallest = epsilon * (2.0 * np.abs(bias.fp32[i])) / qrange
        candidate = s_in * np.float64(scale[i].item())
        if 0.0 < candidate < smallest:
            scale[i] = (np.float64(scale[i].item()) * (smallest / candidate)).astype(scale.dtype)
    return scale


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _overwrite(init, values: np.ndarray) -> None:
    """`values` into `init`, in the field onnxruntime wrote it in (raw bytes or a typed
    list), so that the file is what onnxruntime would have written."""
    from onnx import numpy_helper

    values = np.asarray(values)
    if init.HasField("raw_data"):
        init.raw_data = values.astype(numpy_helper.to_array(init).dtype).tobytes()
        return
    field = next(
        (
            name
            for name in ("float_data", "int32_data", "int64_data", "double_data")
            if len(getattr(init, name))
        ),
        None,
    )
    if field is None:  # an empty tensor: nothing to write
        return
    del getattr(init, field)[:]
    getattr(init, field).extend(values.ravel().tolist())
