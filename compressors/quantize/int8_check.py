"""Proof that a quantized model really computes in int8, how fast, and how close to fp32.

Used by the quantize stage after onnxruntime wrote the model. Three checks:

- **Which kernels run.** onnxruntime fuses QuantizeLinear/DequantizeLinear pairs around a
  Conv/MatMul/Gemm into an int8 kernel (QLinearConv, QGemm, ...) only when it has one for the
  types and the CPU; otherwise the node runs in float between Q/DQ pairs, slower than plain
  fp32. So the graph onnxruntime actually runs is saved (`optimized_model_filepath`, level
  EXTENDED: the fusions that decide int8 vs float, without the CPU-specific NCHWc layout
  rewrite that would hide float convolutions under blocked shapes) and its compute nodes are
  counted.
- **Share of MACs in int8.** onnxruntime keeps the source node's name on a fused node, so each
  optimised compute node takes the MACs of the same-named node of the un-optimised model
  (`mcomp.measure.onnx_macs`); a node with no namesake is counted from the shapes onnxruntime
  saved with the optimised graph (batch 1), the same formulas as `mcomp.measure.onnx_macs`.
- **Speed and parity** against the fp32 input model: both sessions with the same thread
  settings, each timed in its own block; outputs compared on a few eval samples (the run
  compares the whole eval split after the stage).
- **Where the time goes** (`mcomp.measure.ort_profile`): the int8 model's kernel time split between
  int8 kernels and the float ops left around them, and the speed-up that split allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcomp.measure.onnx_macs import _shapes, node_macs, node_macs_by_name

if TYPE_CHECKING:
    import onnx

    from mcomp.compressors.quantize.options import QuantizeOptions
    from mcomp.stage import StageContext

INT8_CONV_OPS = {"QLinearConv", "ConvInteger"}
INT8_MATMUL_OPS = {
    "QLinearMatMul",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QGemm",
    "MatMulIntegerToFloat",
    "QAttention",
    "DynamicQuantizeLSTM",
}
FLOAT_CONV_OPS = {"Conv", "FusedConv", "ConvTranspose"}
FLOAT_MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Attention"}
FLOAT_RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
# QLinearAdd, QLinearConcat, QLinearSigmoid, ...: int8 too, but they carry no MACs
INT8_ELEMENTWISE_PREFIX = "QLinear"


def save_optimized_graph(model_bytes: bytes, target: Path, threads: int) -> onnx.ModelProto:
    """The graph onnxruntime runs for `model_bytes`, saved to `target` and loaded back."""
    import onnx
    import onnxruntime as ort

    from mcomp.measure.ort_session import create_session, session_options

    # mcomp's session settings; only the level differs (see the module docstring)
    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    create_session(model_bytes, threads, options=options)
    optimized = onnx.load(str(target))
    target.unlink(missing_ok=True)  # in memory now; the scratch folder stays small
    return optimized


def count_compute_nodes(
    optimized: onnx.ModelProto,
    source_models: list[onnx.ModelProto],
    input_shapes: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """int8 vs float compute nodes of the optimised graph and the share of MACs in int8.

    `input_shapes`: per-sample input shapes for the dimensions the graph leaves symbolic."""
    known: dict[str, int] = {}
    for model in source_models:
        for name, macs in node_macs_by_name(model, input_shapes).items():
            known.setdefault(name, macs)
    shapes = _shapes(optimized)
    int8_nodes: dict[str, int] = {}
    float_nodes: dict[str, int] = {}
    int8_macs = float_macs = 0
    for node in optimized.graph.node:
        op = node.op_type
        is_int8 = op in INT8_CONV_OPS or op in INT8_MATMUL_OPS
        if is_int8 or op.startswith(INT8_ELEMENTWISE_PREFIX):
            int8_nodes[op] = int8_nodes.get(op, 0) + 1
        elif op in FLOAT_CONV_OPS or op in FLOAT_MATMUL_OPS or op in FLOAT_RECURRENT_OPS:
            float_nodes[op] = float_nodes.get(op, 0) + 1
        else:
            continue
        macs = known.get(node.name) or node_macs(node, shapes)
        if is_int8 or op.startswith(INT8_ELEMENTWISE_PREFIX):
            int8_macs += macs
        else:
            float_macs += macs
    total = int8_macs + float_macs
    return {
        "int8_compute_nodes": int8_nodes,
        "float_compute_nodes": float_nodes,
        "int8_macs": int8_macs,
        "float_macs": float_macs,
        "int8_macs_share": round(int8_macs / total, 4) if total else 0.0,
    }


def float_outputs(
    model_bytes: bytes, feed: dict[str, np.ndarray], threads: int
) -> list[np.ndarray | None]:
    """The model's outputs on `feed` as float64, None for non-float outputs (ids, masks)."""
    from mcomp.measure.ort_session import create_session, run_in_calls

    return [
        np.asarray(out, np.float64) if np.asarray(out).dtype.kind == "f" else None
        for out in run_in_calls(create_session(model_bytes, threads), feed)
    ]


def relative_output_error(
    reference: list[np.ndarray | None],
    quantized_bytes: bytes,
    feed: dict[str, np.ndarray],
    threads: int,
) -> float:
    """||y_int8 - y_fp32|| / ||y_fp32|| over all float outputs, `reference` being the fp32
    model's `float_outputs` on `feed` (inf when they are all zero)."""
    pairs = [
        (a, b)
        for a, b in zip(reference, float_outputs(quantized_bytes, feed, threads), strict=True)
        if a is not None
    ]
    norm = np.sqrt(sum(float(np.sum(a * a)) for a, _ in pairs))
    error = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in pairs))
    return error / norm if norm > 0 else float("inf")


def time_both(
    fp32_bytes: bytes,
    int8_bytes: bytes,
    feed: dict[str, np.ndarray],
    *,
    threads: int,
    warmup: int = 2,
    runs: int = 7,
) -> dict[str, float]:
    """Median latency (ms) of the fp32 and the int8 model on `feed`, each in its own block."""
    import time

    from mcomp.measure.ort_session import create_session, time_session

    result = {}
    for label, model_bytes in (("fp32_ms", fp32_bytes), ("int8_ms", int8_bytes)):
        session = create_session(model_bytes, threads)
        result[label] = round(time_session(session, feed, warmup=warmup, runs=runs), 4)
        del session
        time.sleep(0.05)  # let the previous session's spinning threads go idle
    result["fp32_over_int8"] = round(result["fp32_ms"] / result["int8_ms"], 3)
    return result


SPEED_CHECK_MAX_BATCH = 64
# One fp32 call of the speed check and the profile at most about this long: they run 10
# calls per model (at CRAFT's batch 16, 8.5 s a call, 13 calls took 280 s of its 456 s
# stage). The figure is a stage detail: the run's side-by-side timing of every model at
# the end is what decides whether int8 is faster (mcomp.run.latency).
SPEED_CHECK_CALL_SECONDS = 0.25
SPEED_CHECK_WARMUP, SPEED_CHECK_RUNS = 1, 5
# eval samples whose outputs the parity check compares; the run's evaluation after the
# stage compares the whole eval split (the metric, or fidelity to fp32 without labels)
PARITY_SAMPLES = 16


def speed_check_batch(batch_size: int, fp32_seconds_per_sample: float | None) -> int:
    """`data.batch_size` (at most 64), smaller for a model whose fp32 call at that batch
    would take over `SPEED_CHECK_CALL_SECONDS`; at least 1.

    >>> speed_check_batch(32, 0.001), speed_check_batch(16, 0.5), speed_check_batch(16, 0.05)
    (32, 1, 5)
    """
    batch = min(batch_size, SPEED_CHECK_MAX_BATCH)
    if fp32_seconds_per_sample and fp32_seconds_per_sample > 0:
        batch = min(batch, int(SPEED_CHECK_CALL_SECONDS / fp32_seconds_per_sample))
    return max(batch, 1)


def parity_and_speed(
    fp32_bytes: bytes,
    int8_bytes: bytes,
    inputs: dict[str, np.ndarray],
    threads: int,
    batch_size: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]]]:
    """Output parity of the int8 model with fp32 on `PARITY_SAMPLES` samples of `inputs`,
    the median latency of both at the speed check's batch and their kernel time per op
    type; one profiled session per model, each used for all three in its own block (fp32
    first: its parity run sizes the batch).

    The timed calls are the profiled ones, which cost the PP-OCR detector 0-4 % of its
    latency (fp32 and int8 alike); a separate profiling session per model ran 8 more calls
    of it and took 1.5 s of its 24 s stage. The run's side-by-side timing of every model,
    unprofiled, is what decides whether int8 is faster (mcomp.run.latency).

    Returns (parity, speed check, kernel ms per op type by "fp32" / "int8")."""
    import tempfile
    import time
    from pathlib import Path

    from mcomp.measure.ort_profile import kernel_times, profiled_session
    from mcomp.measure.ort_session import batch_feed, call_rows, run_in_calls, run_timings

    parity_feed = {name: value[:PARITY_SAMPLES] for name, value in inputs.items()}
    samples = len(next(iter(parity_feed.values())))
    outputs, speed, kernels, feed = {}, {}, {}, None
    for label, model_bytes in (("fp32", fp32_bytes), ("int8", int8_bytes)):
        with tempfile.TemporaryDirectory(prefix="mcomp-profile-") as folder:
            session = profiled_session(model_bytes, threads, Path(folder))
            started = time.perf_counter()
            outputs[label] = [np.asarray(out) for out in run_in_calls(session, parity_feed)]
            if feed is None:  # the first call, so not a latency: it only sizes the batch
                per_sample = (time.perf_counter() - started) / max(samples, 1)
                feed = batch_feed(inputs, speed_check_batch(batch_size, per_sample))
                # timed in calls as mcomp makes them (run_in_calls): a few large samples
                speed["batch"] = call_rows(feed)
                feed = {name: value[: speed["batch"]] for name, value in feed.items()}
            timings = run_timings(session, feed, warmup=SPEED_CHECK_WARMUP, runs=SPEED_CHECK_RUNS)
            speed[f"{label}_ms"] = round(float(np.median(timings)), 4)
            # the parity call and the warm-up are not counted in the kernel times
            kernels[label] = kernel_times(
                session, skip=1 + SPEED_CHECK_WARMUP, runs=SPEED_CHECK_RUNS
            )
            del session
        time.sleep(0.05)  # let the previous session's spinning threads go idle
    speed["fp32_over_int8"] = round(speed["fp32_ms"] / speed["int8_ms"], 3)
    diffs = [
        np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
        for a, b in zip(outputs["fp32"], outputs["int8"], strict=True)
        if a.dtype.kind == "f"
    ]
    parity = {}
    if diffs:
        flat = np.concatenate(diffs)
        parity = {
            "samples": samples,
            "max_abs_diff": float(flat.max()),
            "mean_abs_diff": float(flat.mean()),
        }
    return parity, speed, kernels


def prove_int8(
    fp32: onnx.ModelProto,
    quantized: onnx.ModelProto,
    sources: list[onnx.ModelProto],
    ctx: StageContext,
    folder: Path,
    options: QuantizeOptions,
    details: dict[str, Any],
    input_shapes: dict[str, list[int]] | None = None,
) -> list[str]:
    """Which nodes onnxruntime runs in int8, int8 vs fp32 speed, where the int8 model's time
    goes, output parity and what to try should int8 not be faster, all into `details`;
    returns the stage notes."""
    from mcomp.measure.cpu_features import cpu_features
    from mcomp.measure.ort_profile import time_split

    fp32_bytes, int8_bytes = fp32.SerializeToString(), quantized.SerializeToString()
    optimized = save_optimized_graph(int8_bytes, folder / "int8.optimized.onnx", ctx.threads)
    details.update(count_compute_nodes(optimized, sources, input_shapes))
    details["cpu_isa"] = cpu_features()
    split = ctx.datasets.eval or ctx.datasets.first_available()
    names = [value.name for value in fp32.graph.input]
    inputs = {name: split.inputs[name] for name in names if name in split.inputs}
    if len(inputs) != len(names):
        return []  # inputs the data does not name: evaluation reports that, not this check
    parity, speed, kernels = parity_and_speed(
        fp32_bytes, int8_bytes, inputs, ctx.threads, ctx.batch_size
    )
    details["parity"], details["speed_check"] = parity, speed
    # where the quantized model's time goes: what is left outside int8 kernels caps the
    # speed-up, the usual answer to "int8 is not faster"
    details["time_split"] = time_split(kernels["int8"], kernels["fp32"])
    # This one pair of blocks stays a stage detail: whether int8 is faster is decided, and
    # warned about with this advice, from the run's side-by-side timing of all models at the
    # end (mcomp.run.latency), which this check disagreed with on a shared CPU.
    details["speed_advice"] = speed_advice(options, details)
    return []


def speed_advice(options: QuantizeOptions, details: dict[str, Any]) -> str:
    """What to try when int8 is not faster, most likely cause first."""
    tips = []
    split = details.get("time_split") or {}
    if split.get("largest_other_ops_ms"):
        largest = ", ".join(f"{op} {ms:.3g} ms" for op, ms in split["largest_other_ops_ms"].items())
        bound = split.get("speedup_bound")
        tips.append(
            f"{1 - split['quantized_kernel_share']:.0%} of its kernel time is outside "
            f"int8 kernels (largest: {largest})"
            + (f", so it cannot run more than {bound:.2g}x faster than fp32" if bound else "")
        )
        if "SkipLayerNormalization" in split["largest_other_ops_ms"]:
            tips.append(
                "onnxruntime's fused SkipLayerNormalization was slow on these CPUs: "
                "create sessions with disabled_optimizers=['SkipLayerNormFusion']"
            )
    if details.get("mode") == "dynamic":
        # measured (benchmarks/RESULTS.md, "int8 vs fp32"): on 2-layer encoders static ran
        # 2.3-3.0x fp32 where dynamic ran 1.3-2.1x, its activations quantized once ahead of
        # time instead of per batch, at a larger output error
        tips.append(
            "`mode: static` with calibration data (activations quantized ahead of "
            "time instead of per batch: faster, less accurate; check the metric)"
        )
    if details.get("float_compute_nodes"):
        tips.append(
            f"{sum(details['float_compute_nodes'].values())} compute node(s) still run "
            "in float (see details.float_compute_nodes)"
        )
    if options.activation_type == "int8":
        tips.append("unsigned activations (`activation_type: uint8`, U8S8)")
    if not options.per_channel:
        tips.append("`per_channel: true`")
    tips += [
        "a larger batch (small layers are dominated by quantize/dequantize overhead)",
        "`exclude_nodes` for the smallest layers",
    ]
    return "try: " + "; ".join(tips)
