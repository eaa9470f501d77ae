"""onnxruntime pre-processing, and the graph rewrites the quantize stage makes around
onnxruntime's quantizer."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mcomp.errors import StageError
from mcomp.stage import StageContext


def preprocess(source: Path, target: Path, ctx: StageContext) -> Path:
    """ORT's recommended pre-processing; symbolic shape inference fails on some graphs, so
    retry without it, and fall back to the unprocessed model with a warning."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with working_directory(target.parent):
                quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic)
        except Exception:
            continue
        if not _grew_constants(source, target):
            return target
        # onnxruntime's graph optimisation folds constants into new, larger ones: on a
        # TensorFlow audio model (basic-pitch) it made the file 2.5x larger, and the int8
        # model with it; shape inference alone keeps the constants as they are. Folding
        # into a Conv/Gemm/MatMul weight is wanted (a clustered model's codebook lookup
        # becomes a weight the quantizer makes one byte per value), so only other
        # constants count.
        try:
            with working_directory(target.parent):
                quant_pre_process(
                    str(source),
                    str(target),
                    skip_optimization=True,
                    skip_symbolic_shape=skip_symbolic,
                )
            ctx.progress.log(
                "quantize: onnxruntime's graph optimisation grew the model; pre-processed "
                "without it"
            )
            return target
        except Exception:
            continue
    ctx.progress.warn("quantize: onnxruntime pre-processing failed; quantizing the model as is")
    return source


GROWTH_LIMIT = 0.2  # of the model's weight bytes: constants folding may add, beyond weights
WEIGHT_READERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _grew_constants(source: Path, target: Path) -> bool:
    """Whether pre-processing added more bytes of constants that are not Conv/Gemm/MatMul
    weights than GROWTH_LIMIT of the source's constant bytes (initializers and Constant
    nodes: PaddleOCR's files hold every weight in Constant nodes)."""
    import onnx

    def constant_bytes(model) -> tuple[int, int]:
        weights = {
            node.input[1]
            for node in model.graph.node
            if node.op_type in WEIGHT_READERS and len(node.input) > 1
        }
        sizes = {init.name: init.ByteSize() for init in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output:
                sizes[node.output[0]] = sum(a.ByteSize() for a in node.attribute)
        other = sum(size for name, size in sizes.items() if name not in weights)
        return other, sum(sizes.values())

    before, total = constant_bytes(onnx.load(str(source)))
    after, _ = constant_bytes(onnx.load(str(target)))
    return after - before > GROWTH_LIMIT * max(total, 1)


# Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) exist from opset 13; older
# models (PaddleOCR's converters write opset 11) get a model onnxruntime refuses to load.
MIN_OPSET = 13


def upgrade_opset(model, minimum: int = MIN_OPSET):
    """`model` converted to the default-domain opset `minimum` when it is older; as is else."""
    import onnx

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version >= minimum:
        return model
    try:
        return onnx.version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise StageError(
            f"quantize: the model uses opset {version}; int8 QDQ needs opset {minimum} and "
            f"onnx's version converter failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); re-export the model with opset >= {minimum}"
        ) from None


# ops whose weight and bias inputs onnxruntime's quantizer rewrites per node
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def unshare_weights(model) -> int:
    """Give every Conv/Gemm bias initializer read by more than one of them a copy of its
    own; returns the copies made.

    Exporters share equal tensors (a TensorFlow model's two Conv1d layers read one bias):
    onnxruntime's quantizer then quantizes the shared bias once per node with different
    scales (input scale x weight scale) under the same name and writes a graph it cannot
    load. A shared weight is quantized from its own values alone, the same for every
    reader, so it stays shared: copying basic-pitch's two 37 KB kernels, each read by nine
    convolutions, made its int8 file 1.4x the fp32 one."""
    from onnx import TensorProto

    initializers = {init.name: init for init in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        for index in range(2, len(node.input)):  # the bias (MatMul has none)
            name = node.input[index]
            if name not in initializers:
                continue
            if name in seen:
                copy = TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}_{node.name or index}_copy{copies}"
                model.graph.initializer.append(copy)
                node.input[index] = copy.name
                copies += 1
            else:
                seen.add(name)
    return copies


@contextlib.contextmanager
def working_directory(folder: Path):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def gemm_to_matmul(model):
    """Rewrite Gemm(A, B, C) with constant B as MatMul(A, B') + C so it can be quantized."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        )
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = node.input[1] + "_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        product = node.output[0] + "_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], name], [product], name=(node.name or product) + "_matmul"
            )
        )
        if len(node.input) > 2 and node.input[2]:
            nodes.append(
                helper.make_node(
                    "Add",
                    [product, node.input[2]],
                    [node.output[0]],
                    name=(node.name or product) + "_bias",
                )
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def keep_outputs_float(model) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pair in front of each graph output.

    onnxruntime's QDQ quantizer also quantizes the last node's output: the model's logits (or
    regression values) get rounded to 256 levels, which costs accuracy (top-1 flips between
    close logits) and saves no time, since QGemm/QLinearMatMul/QLinearConv can produce float.
    NNCF and TensorRT leave outputs in float too. Returns the outputs made float again."""
    graph = model.graph
    outputs = {value.name for value in graph.output}
    producer = {name: node for node in graph.node for name in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    restored = []
    for name in sorted(outputs):
        dequantize = producer.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producer.get(dequantize.input[0])
        if (
            quantize is None
            or quantize.op_type != "QuantizeLinear"
            or uses.get(quantize.output[0], 0) != 1
        ):
            continue
        source = quantize.input[0]
        maker = producer.get(source)
        # only when the float tensor feeds nothing else and is not itself an output
        if maker is None or uses.get(source, 0) != 1 or source in outputs:
            continue
        maker.output[list(maker.output).index(source)] = name
        graph.node.remove(quantize)
        graph.node.remove(dequantize)
        for param in [*quantize.input[1:], *dequantize.input[1:]]:
            uses[param] -= 1
        restored.append(name)
    unused = [init for init in graph.initializer if uses.get(init.name, 1) == 0]
    for init in unused:  # the removed pairs' scales and zero points
        graph.initializer.remove(init)
    return restored


def attention_nodes(model) -> set[str]:
    """Softmax nodes and MatMuls whose two inputs are both activations (attention's Q·Kᵀ and
    probabilities·V), which `float_attention` leaves in float.

    Measured with onnxruntime 1.32 on AVX-512 VNNI (benchmarks/bench_int8.py): QLinearSoftmax
    ran 4x slower than float Softmax, and a 2-layer d128 encoder ran 2.35x faster than fp32
    at batch 64 with these nodes in float vs 1.99x with them in int8, at the same output
    error."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }
    found = set()
    for node in model.graph.node:
        two_activations = not any(name in constants for name in node.input)
        if node.op_type == "Softmax" or (node.op_type == "MatMul" and two_activations):
            found.add(node.name)
    return found


def pack_initializers(model) -> int:
    """Store every initializer as raw little-endian bytes; returns the bytes saved.

    onnxruntime's quantizer writes zero points (and some scales) through
    `onnx.helper.make_tensor`, which puts them in protobuf's typed fields: int8 zero points
    become int32 varints, ten bytes for each negative value. On a d128 transformer encoder,
    dynamic int8, that was 7.9 KB of its 293 KB (its zero points are 10 % negative).
    Re-encoding is lossless: the same values, the same dtype."""
    from onnx import numpy_helper

    saved = 0
    graph = model.graph
    for index, tensor in enumerate(graph.initializer):
        if (
            tensor.raw_data
            or tensor.data_location == tensor.EXTERNAL
            or tensor.data_type == tensor.STRING
        ):
            continue
        packed = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        before = tensor.ByteSize()
        if packed.ByteSize() <= before:
            saved += before - packed.ByteSize()
            graph.initializer[index].CopyFrom(packed)
    return saved


ROLE_SUFFIXES = ("_zero_point", "_scale", "_quantized")


def compact_names(model, keep: set[str]) -> int:
    """Give the tensors and nodes the quantizer added short names (`q0`, `q1`, ...) and drop
    the intermediate shape annotations; names in `keep` (the fp32 model's tensor and node
    names, the graph's inputs and outputs) stay. Returns the bytes saved.

    onnxruntime derives every added name from the tensor it quantizes
    (`<tensor>_DequantizeLinear_Output`, `<weight>_quantized_scale`, ...), and each name is
    written once per use: on a 0.6 MB depthwise CNN they were a fifth of the int8 file. The
    layers keep their names (reports, `exclude_nodes` and the fallback refer to them)."""
    graph = model.graph
    before = model.ByteSize()
    keep = keep | {v.name for v in graph.input} | {v.name for v in graph.output}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in renamed:
            # the role of a quantization parameter stays readable: q12_scale, q12_zero_point
            suffix = next((s for s in ROLE_SUFFIXES if name.endswith(s)), "")
            renamed[name] = f"q{len(renamed)}{suffix}"
        return renamed[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        if node.name and node.name not in keep:
            node.name = short(f"node:{node.name}")
        for index, name in enumerate(node.input):
            node.input[index] = short(name)
        for index, name in enumerate(node.output):
            node.output[index] = short(name)
    # shapes of intermediate tensors: onnxruntime infers them again when it loads the model
    del graph.value_info[:]
    return before - model.ByteSize()
