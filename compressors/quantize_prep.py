"""onnxruntime pre-processing and graph rewrites that the quantize stage runs first."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mcomp.stage import StageContext


def preprocess(source: Path, target: Path, ctx: StageContext) -> Path:
    """ORT's recommended pre-processing; symbolic shape inference fails on some graphs, so
    retry without it, and fall back to the unprocessed model with a warning."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with working_directory(target.parent):
                quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic)
            return target
        except Exception:
            continue
    ctx.progress.warn("quantize: onnxruntime pre-processing failed; quantizing the model as is")
    return source


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
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = node.input[1] + "_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        product = node.output[0] + "_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product],
                                      name=(node.name or product) + "_matmul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=(node.name or product) + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
