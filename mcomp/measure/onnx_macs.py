"""Multiply-accumulate counts of an ONNX graph for one sample, from ONNX shape inference.

Counts the ops that carry almost all the work of CNNs, MLPs, transformers and recurrent
models: Conv and ConvTranspose (1-D, 2-D, 3-D, and their int8 and fused forms), Gemm and
MatMul (and their int8, 4-bit and fused forms), Einsum, LSTM / GRU / RNN (and onnxruntime's
DynamicQuantizeLSTM). Element-wise ops are left out, as torch's flop counter leaves them out.

Shapes come from shape inference (onnxruntime's symbolic one, else ONNX's) on the graph with
every input dimension fixed: the batch
axis to 1 and symbolic dimensions (a sequence or audio length) to the per-sample shape the
run feeds (`input_shapes`), since a Conv1d over 32 768 samples counted with its length as 1
is off by four orders of magnitude. A compute node whose shapes stay unknown is counted as 0
and listed in `MacCount.uncounted`, so a report can say what it could not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv"}
CONV_TRANSPOSE_OPS = {"ConvTranspose"}
MATMUL_OPS = {
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "Gemm",
    "QGemm",
    "MatMulNBits",
    "FusedMatMul",
    "FusedGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}
RECURRENT_OPS = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}  # gates per step
COMPUTE_OPS = CONV_OPS | CONV_TRANSPOSE_OPS | MATMUL_OPS | set(RECURRENT_OPS) | {"Einsum"}


@dataclass
class MacCount:
    """MACs of one sample per compute node, and the compute nodes whose shapes were unknown."""

    by_node: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)  # "name (OpType)"

    @property
    def total(self) -> int:
        return sum(self.by_node.values())


def count_onnx_macs(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> int:
    """Total MACs of one sample (see `count_macs`)."""
    return count_macs(model, input_shapes).total


def node_macs_by_name(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> dict[str, int]:
    """{node name (or `#index` when unnamed): MACs of one sample} for compute nodes; the
    per-layer view (inspect, int8 proof) and the report's total count the same way."""
    return count_macs(model, input_shapes).by_node


def count_macs(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> MacCount:
    """MACs per compute node of one sample. `input_shapes`: per-sample shapes (no batch
    axis) by input name, used for the dimensions the graph leaves symbolic."""
    inferred = _inferred(model, input_shapes or {})
    shapes = _shapes(inferred)
    count = MacCount()
    for index, node in enumerate(inferred.graph.node):
        if node.op_type not in COMPUTE_OPS:
            continue
        name = node.name or f"#{index}"
        macs = node_macs(node, shapes)
        count.by_node[name] = macs
        if macs == 0:
            count.uncounted.append(f"{name} ({node.op_type})")
    return count


def sample_shapes(inputs, datasets=None) -> dict[str, list[int]]:
    """Per-sample input shapes by name for counting: the model's input specs, with the
    dimensions an ONNX file leaves symbolic (-1: a detector's height and width, an audio
    length) taken from the data the run feeds, where a split holds an array of that name
    and rank."""
    arrays = {}
    if datasets is not None:
        for split in (datasets.eval, datasets.calibration, datasets.train):
            if split is not None:
                arrays = {name: array.shape[1:] for name, array in split.inputs.items()}
                break
    shapes = {}
    for spec in inputs:
        shape = list(spec.shape)
        fed = arrays.get(spec.name)
        if fed is not None and len(fed) == len(shape):
            shape = [int(f) if s <= 0 else s for s, f in zip(shape, fed, strict=True)]
        shapes[spec.name] = shape
    return shapes


def _inferred(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> onnx.ModelProto:
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        sample = input_shapes.get(value.name)
        for position, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                continue
            if position == 0:
                dim.dim_value = 1  # the batch axis
            elif sample is not None and len(sample) == len(dims) - 1:
                size = int(sample[position - 1])
                if size > 0:  # -1: unknown here too; a -1 fixed in would size every layer wrong
                    dim.dim_value = size
    # onnxruntime's symbolic shape inference follows shapes through Shape/Slice/Concat/Reshape
    # chains (what exporters emit around recurrent layers) and knows its contrib ops, where
    # ONNX's own inference stops; ONNX's is the fallback.
    try:
        import contextlib
        import tempfile

        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # where it cannot finish, onnxruntime saves its partial model into the current
        # directory ("sym_shape_infer_temp.onnx" and its weights): never the user's folder
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            return SymbolicShapeInference.infer_shapes(fixed, auto_merge=True)
    except Exception:
        pass
    try:
        return onnx.shape_inference.infer_shapes(fixed)
    except Exception:
        return fixed  # counting what is known beats failing the whole measurement


def _shapes(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    """Tensor name -> shape; None where any dimension is unknown."""
    shapes: dict[str, list[int] | None] = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = tensor.shape.dim
        known = all(d.HasField("dim_value") for d in dims)
        shapes[value.name] = [d.dim_value for d in dims] if known else None
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def node_macs(node, shapes: dict[str, list[int] | None]) -> int:
    """MACs of one compute node from known shapes; 0 when they are unknown."""
    op = node.op_type
    if op in CONV_OPS:
        return _conv_macs(node, shapes)
    if op in CONV_TRANSPOSE_OPS:
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        # every input position scatters Cin x (Cout/groups) x kernel products
        return math.prod(x[2:]) * math.prod(w) if x and w else 0
    if op in MATMUL_OPS:
        return _matmul_macs(node, shapes)
    if op in RECURRENT_OPS:
        return _recurrent_macs(node, shapes)
    if op == "Einsum":
        return _einsum_macs(node, shapes)
    return 0


def _conv_macs(node, shapes) -> int:
    weight = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
    out, w = shapes.get(node.output[0]), shapes.get(weight)
    if not out or not w:
        return 0
    # each output element sums Cin/groups x kernel products
    return math.prod(out[1:]) * math.prod(w[1:])


def _matmul_macs(node, shapes) -> int:
    out, a = shapes.get(node.output[0]), shapes.get(node.input[0])
    if not out or not a:
        return 0
    k = a[-1]
    if node.op_type in ("Gemm", "FusedGemm", "QGemm"):
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
    return math.prod(out) * k


def _recurrent_macs(node, shapes) -> int:
    """seq_len x directions x gates x hidden x (input + hidden): W and R carry exactly the
    products of one step, `[directions, gates*hidden, input|hidden]`."""
    x, w, r = (shapes.get(name) for name in node.input[:3])
    if not x or not w or not r:
        return 0
    batch_first = next((attr.i for attr in node.attribute if attr.name == "layout"), 0)
    steps = x[1] if batch_first else x[0]
    return steps * (math.prod(w) + math.prod(r))


def _einsum_macs(node, shapes) -> int:
    """The product of the sizes of every index letter (the loop nest einsum runs)."""
    equation = next(
        (attr.s.decode() for attr in node.attribute if attr.name == "equation"), ""
    ).replace(" ", "")
    operands = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, name in zip(operands, node.input, strict=False):
        shape = shapes.get(name)
        if shape is None or "." in letters or len(letters) != len(shape):
            return 0
        sizes.update(zip(letters, shape, strict=True))
    return math.prod(sizes.values()) if len(operands) > 1 else 0
