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
    errors = local_errors(reference, quantized, tensors, feed, ctx.threads)
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


def local_errors(
    reference, quantized, names: set[str], feed: dict[str, np.ndarray], threads: int
) -> dict[str, float]:
    """||a - b|| / ||a|| of every float tensor in `names` that both models compute, a = the
    reference's, b = the quantized model's, accumulated over batches small enough that one
    batch of exposed tensors stays within statistics.MEMORY_BUDGET."""
    from mcomp.compressors.quantize.statistics import MEMORY_BUDGET

    produced = {o for node in quantized.graph.node for o in node.output}
    float_session, float_names = exposed_session(reference, names & produced, threads)
    quant_session, quant_names = exposed_session(quantized, set(float_names), threads)
    first = {k: v[:1] for k, v in feed.items()}
    per_sample = 2 * sum(np.asarray(v).nbytes for v in float_session.run(float_names, first))
    batch = int(max(1, MEMORY_BUDGET // max(per_sample, 1)))
    squared_diff: dict[str, float] = {}
    squared_ref: dict[str, float] = {}
    count = len(next(iter(feed.values())))
    for start in range(0, count, batch):
        part = {k: v[start : start + batch] for k, v in feed.items()}
        floats = dict(zip(float_names, float_session.run(float_names, part), strict=True))
        quants = dict(zip(quant_names, quant_session.run(quant_names, part), strict=True))
        for name, b in quants.items():
            a = np.asarray(floats[name])
            b = np.asarray(b)
            if a.dtype.kind != "f" or b.shape != a.shape:
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            squared_diff[name] = squared_diff.get(name, 0.0) + float(np.sum((a64 - b64) ** 2))
            squared_ref[name] = squared_ref.get(name, 0.0) + float(np.sum(a64**2))
    return {n: (squared_diff[n] ** 0.5) / (squared_ref[n] ** 0.5 + EPSILON) for n in squared_diff}


def exposed_session(model, names: set[str], threads: int):
    """A session of `model` with the tensors `names` it computes as extra outputs;
    (session, the output names, graph outputs included)."""
    import onnx

    from mcomp.measure.ort_session import create_session

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    produced = {o for node in exposed.graph.node for o in node.output}
    present = {o.name for o in exposed.graph.output}
    for name in sorted((names & produced) - present):
        exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    session = create_session(exposed.SerializeToString(), threads)
    return session, [o.name for o in session.get_outputs() if o.name in names]


def run_with_intermediates(
    model, names: set[str], feed: dict[str, np.ndarray], threads: int
) -> dict[str, np.ndarray]:
    """Float tensors `names` of `model` on `feed` (those the graph computes)."""
    session, wanted = exposed_session(model, names, threads)
    if not wanted:
        return {}  # (onnxruntime's run([]) would return every output)
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


def rank_by_output(
    quantized,
    fp32,
    candidates: list[str],
    feed: dict[str, np.ndarray],
    *,
    threads: int,
    classification: bool,
    progress=None,
    deadline: float | None = None,
) -> list[tuple[str, float]]:
    """`candidates` by the output error of quantizing each alone (every other node of the
    static QDQ model `quantized` in float), most sensitive first: (name, error).

    The practice of AIMET, Quark and onnxsim's study (per-layer quantization measured at the
    model's output on a few dozen samples ranks layers like the full metric does); the
    models are built by editing the graph (float_nodes.py), not by quantizing again. Past
    `deadline` (a `time.perf_counter()` value) the nodes not yet measured are left out."""
    import time

    from mcomp.compressors.quantize.float_nodes import quantized_nodes, with_nodes_in_float
    from mcomp.compressors.quantize.int8_check import float_outputs
    from mcomp.measure.ort_session import create_session, run_in_calls

    reference = float_outputs(fp32.SerializeToString(), feed, threads)
    everything = set(quantized_nodes(quantized))
    scores = []
    if progress is not None:
        progress.start("ranking nodes by sensitivity", total=len(candidates))
    for name in candidates:
        if deadline is not None and time.perf_counter() > deadline:
            break
        alone = with_nodes_in_float(quantized, fp32, everything - {name})
        session = create_session(alone.SerializeToString(), threads)
        outputs = [np.asarray(o, np.float64) for o in run_in_calls(session, feed)]
        scores.append((name, round(output_error(reference, outputs, classification), 8)))
        if progress is not None:
            progress.advance()
    if progress is not None:
        progress.finish()
    return sorted(scores, key=lambda item: -item[1])


def output_error(
    reference: list[np.ndarray | None], outputs: list[np.ndarray], classification: bool
) -> float:
    """How far `outputs` are from the fp32 `reference`, summed over float outputs: the mean
    KL divergence of the class distributions for classifiers (softmax of logits, or the
    outputs themselves when they are probabilities), else the mean 1 − cosine per sample."""
    total = 0.0
    for ref, out in zip(reference, outputs, strict=True):
        if ref is None:
            continue
        if classification and ref.ndim >= 2:
            p, q = _probabilities(ref), _probabilities(out)
            total += float(np.mean(np.sum(p * (np.log(p + EPSILON) - np.log(q + EPSILON)), -1)))
        else:
            a = ref.reshape(len(ref), -1)
            b = out.reshape(len(out), -1)
            cos = np.sum(a * b, 1) / (
                np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + EPSILON
            )
            total += float(np.mean(1.0 - cos))
    return total


def _probabilities(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    if values.min() >= 0 and np.allclose(values.sum(-1), 1.0, atol=1e-3):
        return values
    shifted = values - values.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)
