"""Cross-layer equalization of the fp32 graph before int8 (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019).

Per-channel int8 weights still share one activation scale per tensor: when the output
channels of a convolution have very different ranges (common after BatchNorm folding, worst in
depthwise convolutions), the small channels of the activation between two convolutions get a
handful of int8 levels. For Conv₁ → f → Conv₂ with f positively homogeneous
(f(x/s) = f(x)/s for s > 0: ReLU, LeakyReLU, PReLU, nothing), dividing output channel i of
Conv₁ (weights and bias) by s_i and multiplying input channel i of Conv₂ by s_i leaves the
function unchanged; s_i = sqrt(r1_i / r2_i) gives both layers the range sqrt(r1_i r2_i)
(r1_i: |max| of Conv₁'s output channel i weights, r2_i: of Conv₂'s input channel i weights).
Chains (Conv → depthwise → Conv) are equalized pair by pair, repeatedly, until the scales
settle. A depthwise (grouped) Conv₂'s input channel i is its output channel i; the grouped
reshape below covers every group count.

ReLU6 exported as Clip(0, 6) is not homogeneous (its bound would have to become 6/s_i, per
channel, which one Clip cannot hold), so such pairs are skipped, as are pairs whose middle
tensor has another reader or is a graph output: the fp32 function never changes.

High-bias absorption (optional): after equalization, a ReLU pair's pre-activation h_i whose
calibration minimum c_i is positive is shifted, ReLU(h − c) + c = ReLU(h) for h ≥ c, and
Conv₂'s bias takes W₂·c. It is exact on every input whose pre-activation stays above the
calibration minimum, not on all inputs, hence off by default; only into a Conv₂ without
padding (a padded border would see 0, not c).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mcomp.compressors.quantize.statistics import TensorStatistics

# activations f with f(x / s) = f(x) / s for every s > 0
HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}
MAX_ITERATIONS = 20
SETTLED = 1e-3  # largest |log s| of an iteration that counts as converged
SCALE_LIMIT = 1024.0  # keeps scaled weights far from float32 underflow


@dataclass
class Pair:
    """Two convolutions to equalize and what lies between them."""

    first: Any  # Conv node producing the middle tensor
    second: Any  # Conv node reading it
    activation: Any | None  # the homogeneous node between, if any
    activation_range: np.ndarray | None = None  # |max| per channel of the middle tensor
    scale: np.ndarray | None = field(default=None, repr=False)  # accumulated s per channel


def equalization_pairs(model) -> tuple[list[Pair], dict[str, int]]:
    """The Conv → (ReLU-like | nothing) → Conv pairs that can be equalized exactly, and a
    count of the pairs skipped by reason."""
    graph = model.graph
    inits = {init.name for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(tensor: str):
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    pairs, skipped = [], {}
    for node in graph.node:
        if not _plain_conv(node, inits):
            continue
        second, activation = only_reader(node.output[0]), None
        kind = _activation_kind(second, model, inits) if second is not None else None
        if kind == "skip":
            after = only_reader(second.output[0])
            if after is not None and _plain_conv(after, inits):  # a pair lost to it
                skipped[second.op_type] = skipped.get(second.op_type, 0) + 1
            continue
        if kind == "homogeneous":
            activation, second = second, only_reader(second.output[0])
        if second is not None and _plain_conv(second, inits):
            pairs.append(Pair(node, second, activation))
    return pairs, skipped


def _activation_kind(node, model, inits: set[str]) -> str | None:
    """homogeneous (f(x/s) = f(x)/s), skip (an activation that is not), None (no
    activation: the reader itself is the candidate second layer)."""
    if node.op_type in ("Relu", "LeakyRelu"):
        return "homogeneous"
    if node.op_type == "PRelu":
        return "homogeneous" if node.input[1] in inits else "skip"
    if node.op_type == "Clip":  # Clip(0, +inf) is a ReLU; Clip(0, 6) is not homogeneous
        return "homogeneous" if _clip_bounds(node, model) == (0.0, np.inf) else "skip"
    return None


def _plain_conv(node, inits: set[str]) -> bool:
    """A Conv whose weight (and bias) are initializers of its own."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    return len(node.input) < 3 or not node.input[2] or node.input[2] in inits


def _clip_bounds(node, model) -> tuple[float | None, float]:
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "min" in attrs or "max" in attrs:  # opset < 11
        return attrs.get("min", -np.inf), attrs.get("max", np.inf)
    values = {init.name: init for init in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            bounds.append(default)
        elif name in values:
            bounds.append(float(numpy_helper.to_array(values[name]).reshape(-1)[0]))
        elif name in constants:
            tensor = helper.get_attribute_value(constants[name].attribute[0])
            bounds.append(float(numpy_helper.to_array(tensor).reshape(-1)[0]))
        else:
            return None, np.inf  # a bound computed at run time
    return bounds[0], bounds[1]


def equalize(
    model,
    *,
    absorb_bias: bool = False,
    stats: dict[str, TensorStatistics] | None = None,
    activation_ranges: bool = False,
) -> dict[str, Any]:
    """Equalize every pair of `model` (a ModelProto, edited in place). `stats`: the
    unequalized model's activation statistics, needed by `absorb_bias` (absorb high biases
    too) and `activation_ranges` (balance the middle tensor's channel ranges against the
    second layer's weights instead of the two layers' weights: what matters once weights are
    quantized per channel). Returns facts for the report."""
    from onnx import numpy_helper

    pairs, skipped = equalization_pairs(model)
    if activation_ranges and stats is not None:
        for pair in pairs:
            pair.activation_range = _middle_range(pair, stats)
    arrays = {init.name: init for init in model.graph.initializer}
    weights = {
        name: numpy_helper.to_array(arrays[name]).astype(np.float64)
        for pair in pairs
        for node in (pair.first, pair.second)
        for name in node.input[1:3]
        if name
    }
    before = [_channel_spread(weights[p.first.input[1]]) for p in pairs]
    iterations = 0
    while pairs and iterations < MAX_ITERATIONS:
        iterations += 1
        if max(_equalize_pair(pair, weights) for pair in pairs) < SETTLED:
            break
    absorbed = 0
    if absorb_bias and stats is not None:
        absorbed = sum(_absorb_high_bias(pair, weights, stats) for pair in pairs)
    for name, value in weights.items():
        arrays[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    facts: dict[str, Any] = {"pairs": len(pairs), "iterations": iterations}
    if pairs:
        after = [_channel_spread(weights[p.first.input[1]]) for p in pairs]
        facts["median_channel_range_ratio"] = {
            "before": round(float(np.median(before)), 3),
            "after": round(float(np.median(after)), 3),
        }
    if skipped:
        facts["skipped"] = skipped
    if absorb_bias:
        facts["high_bias_absorbed"] = absorbed
    return facts


def _out_ranges(weight: np.ndarray) -> np.ndarray:
    return np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)


def _in_ranges(weight: np.ndarray, groups: int) -> np.ndarray:
    """|max| per input channel of a (grouped) Conv weight (out, in/groups, k...)."""
    out, per_group = weight.shape[0], weight.shape[1]
    blocks = np.abs(weight.reshape(groups, out // groups, per_group, -1))
    return blocks.max(axis=(1, 3)).reshape(-1)


def _scale_inputs(weight: np.ndarray, groups: int, scale: np.ndarray) -> np.ndarray:
    out, per_group = weight.shape[0], weight.shape[1]
    blocks = weight.reshape(groups, out // groups, per_group, -1)
    return (blocks * scale.reshape(groups, 1, per_group, 1)).reshape(weight.shape)


def _groups(node) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def _equalize_pair(pair: Pair, weights: dict[str, np.ndarray]) -> float:
    """One equalization step of `pair`; returns the largest |log s| it applied."""
    w1, w2 = weights[pair.first.input[1]], weights[pair.second.input[1]]
    groups = _groups(pair.second)
    r1, r2 = _out_ranges(w1), _in_ranges(w2, groups)
    if pair.activation_range is not None and pair.activation_range.shape == r1.shape:
        r1 = pair.activation_range / (1.0 if pair.scale is None else pair.scale)
    if r1.shape != r2.shape:
        return 0.0
    live = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[live] = np.sqrt(r1[live] / r2[live])
    scale = np.clip(scale, 1 / SCALE_LIMIT, SCALE_LIMIT)
    if pair.scale is not None:  # the accumulated scale stays within the limit too
        scale = np.clip(pair.scale * scale, 1 / SCALE_LIMIT, SCALE_LIMIT) / pair.scale
    weights[pair.first.input[1]] = w1 / scale.reshape(-1, *[1] * (w1.ndim - 1))
    if len(pair.first.input) > 2 and pair.first.input[2]:
        weights[pair.first.input[2]] = weights[pair.first.input[2]] / scale
    weights[pair.second.input[1]] = _scale_inputs(w2, groups, scale)
    pair.scale = scale if pair.scale is None else pair.scale * scale
    return float(np.abs(np.log(scale)).max())


def _middle_range(pair: Pair, stats: dict[str, TensorStatistics]) -> np.ndarray | None:
    """|max| per channel of what the second layer reads (after a ReLU: the positive part)."""
    entry = stats.get(pair.first.output[0])
    if entry is None or entry.channel_low is None or entry.channel_high is None:
        return None
    high = entry.channel_high.astype(np.float64)
    if pair.activation is not None and pair.activation.op_type in ("Relu", "Clip"):
        return np.maximum(high, 0.0)
    return np.maximum(np.abs(entry.channel_low), np.abs(high))


def _channel_spread(weight: np.ndarray) -> float:
    """Largest over smallest output-channel weight range (1 = perfectly equalized), dead
    channels (below 1e-6 of the largest) left out."""
    ranges = _out_ranges(weight)
    ranges = ranges[ranges > 1e-6 * ranges.max()] if ranges.size else ranges
    return float(ranges.max() / ranges.min()) if ranges.size else 1.0


def _absorb_high_bias(pair: Pair, weights, stats: dict[str, TensorStatistics]) -> int:
    """Move the part of a ReLU pair's pre-activation that never reaches zero on the
    calibration samples into the second layer's bias; 1 if done."""
    entry = stats.get(pair.first.output[0])
    biases = [n.input[2] if len(n.input) > 2 else "" for n in (pair.first, pair.second)]
    if (
        pair.activation is None
        or pair.activation.op_type not in ("Relu", "Clip")
        or entry is None
        or entry.channel_low is None
        or not all(biases)
        or _padded(pair.second)
    ):
        return 0
    scale = np.ones_like(entry.channel_low) if pair.scale is None else pair.scale
    shift = np.maximum(entry.channel_low / scale, 0.0)
    if not shift.any():
        return 0
    w2, groups = weights[pair.second.input[1]], _groups(pair.second)
    out, per_group = w2.shape[0], w2.shape[1]
    summed = w2.reshape(groups, out // groups, per_group, -1).sum(axis=3)
    added = np.einsum("gop,gp->go", summed, shift.reshape(groups, per_group)).reshape(-1)
    weights[biases[0]] = weights[biases[0]] - shift
    weights[biases[1]] = weights[biases[1]] + added
    return 1


def _padded(node) -> bool:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return any(attrs.get("pads", [])) or auto_pad not in ("NOTSET", "VALID")
