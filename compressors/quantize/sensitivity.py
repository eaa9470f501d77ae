"""Per-node sensitivity to quantization: float and quantized activations side by side.

The same measurement as `onnxruntime.quantization.qdq_loss_debug` (expose every intermediate
tensor as a graph output, run both models on the same samples, compare tensors of the same
name), written out here because its helpers save augmented models into the working directory
and compare only QDQ pairs. In a QDQ model a node's own output keeps the float model's tensor
name (the QuantizeLinear that follows reads it), so float and quantized tensors match by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mcomp.stage import StageContext

EPSILON = 1e-12


def rank_nodes(
    prepared_path: Path, quantized, ctx: StageContext, *, mode: str, skip: set[str], samples: int
) -> list[tuple[str, float]]:
    """Quantized compute nodes by local error, most sensitive first: (name, score).

    A node's score is the relative L2 error of its output minus the largest relative error of
    its inputs (what it adds, not what it inherits)."""
    import onnx

    from mcomp.compressors.quantize.prepare import gemm_to_matmul

    reference = onnx.load(str(prepared_path))
    if mode == "dynamic":
        reference = gemm_to_matmul(reference)
    candidates = _quantized_nodes(reference, quantized, skip)
    split = ctx.datasets.calibration or ctx.datasets.eval
    names = [
        value.name
        for value in reference.graph.input
        if value.name not in {i.name for i in reference.graph.initializer}
    ]
    feed = {name: split.inputs[name][:samples] for name in names}
    tensors = {out for node in reference.graph.node for out in node.output if out}
    float_values = run_with_intermediates(reference, tensors, feed, ctx.threads)
    quant_values = run_with_intermediates(quantized, set(float_values), feed, ctx.threads)
    errors = {
        name: relative_error(float_values[name], quant_values[name])
        for name in float_values
        if name in quant_values
    }
    for name in feed:
        errors[name] = 0.0
    kept = {node.name for node in quantized.graph.node}
    scores = []
    for node in reference.graph.node:
        if node.name not in candidates:
            continue
        outputs = [errors[o] for o in _fused_outputs(node, reference, kept) if o in errors]
        if not outputs:
            continue
        inherited = max((errors[i] for i in node.input if i in errors), default=0.0)
        scores.append((node.name, round(max(outputs) - inherited, 6)))
    return sorted(scores, key=lambda item: -item[1])


def _fused_outputs(node, reference, kept: set[str]) -> list[str]:
    """The node's outputs, or, when the quantizer fused a following Relu/Clip into it (that
    node is gone and the node now writes the activation's output), the activation's."""
    outputs = list(node.output)
    for other in reference.graph.node:
        if (
            other.name not in kept
            and other.input
            and other.input[0] in node.output
            and other.op_type in ("Relu", "Clip")
        ):
            outputs += list(other.output)
    return outputs


def _quantized_nodes(reference, quantized, skip: set[str]) -> set[str]:
    """Nodes of the float model that the quantizer touched: in QDQ, a node whose inputs now
    come from DequantizeLinear; in dynamic mode, a node replaced by `<name>_quant`."""
    dequantized = {
        o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    by_name = {n.name: n for n in quantized.graph.node}
    touched = set()
    for node in reference.graph.node:
        if node.name in skip or not node.name:
            continue
        twin = by_name.get(node.name)
        if node.name + "_quant" in by_name or (
            twin is not None and any(i in dequantized for i in twin.input)
        ):
            touched.add(node.name)
    return touched


def run_with_intermediates(
    model, names: set[str], feed: dict[str, np.ndarray], threads: int
) -> dict[str, np.ndarray]:
    """Float tensors `names` of `model` on `feed` (those the graph computes)."""
    import onnx

    from mcomp.measure.ort_session import create_session

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    produced = {o for node in exposed.graph.node for o in node.output}
    present = {o.name for o in exposed.graph.output}
    for name in sorted((names & produced) - present):
        exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    session = create_session(exposed.SerializeToString(), threads)
    wanted = [o.name for o in session.get_outputs() if o.name in names]
    values = session.run(wanted, feed)
    return {
        name: np.asarray(value)
        for name, value in zip(wanted, values, strict=True)
        if np.asarray(value).dtype.kind == "f"
    }


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """||a - b|| / ||a|| in float64; 0 when shapes differ (not comparable)."""
    if reference.shape != other.shape:
        return 0.0
    a, b = reference.astype(np.float64), other.astype(np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + EPSILON))
