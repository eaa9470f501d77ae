"""Where a model's time goes in onnxruntime: milliseconds per op type, from its profiler.

The quantize stage uses it to say why an int8 model is not (much) faster. The time its graph
still spends outside quantized kernels (float LayerNorm, Softmax, Transpose, the Quantize/
DequantizeLinear at every float boundary) caps the speed-up however fast the int8 kernels
are (Amdahl's law). Measured on a 2-layer d128 transformer encoder (benchmarks/bench_int8.py):
dynamic int8 spent 10.8 of its 14.5 ms outside int8 kernels, so it could never run more than
1.7x faster than fp32, which is why it ran 1.3x.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

# op types onnxruntime runs with integer (or 4-bit) arithmetic; everything else is float or
# data movement (DynamicQuantizeLinear, QuantizeLinear and DequantizeLinear included: they are
# the price of the float boundaries, not int8 compute)
QUANTIZED_KERNEL_PREFIXES = (
    "QLinear",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
)


def op_times(
    model_bytes: bytes,
    feed: dict[str, np.ndarray],
    threads: int,
    *,
    runs: int = 3,
    warmup: int = 1,
    disabled_optimizers: list[str] | None = None,
) -> dict[str, float]:
    """Kernel milliseconds per run for each op type, from onnxruntime's profiler.

    The session has mcomp's usual settings (`mcomp.measure.ort_session.session_options`) plus
    profiling; the profile file goes to a temporary folder that is removed. Kernel time only,
    so the sum is a little under the measured latency."""
    with tempfile.TemporaryDirectory(prefix="mcomp-profile-") as folder:
        session = profiled_session(model_bytes, threads, Path(folder), disabled_optimizers)
        for _ in range(warmup + runs):
            session.run(None, feed)
        return kernel_times(session, skip=warmup, runs=runs)


def profiled_session(
    model_bytes: bytes,
    threads: int,
    folder: Path,
    disabled_optimizers: list[str] | None = None,
):
    """A session with mcomp's usual settings and onnxruntime's profiler on, writing its
    profile into `folder`; `kernel_times` reads it once the calls are made."""
    from mcomp.measure.ort_session import create_session, session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    return create_session(model_bytes, threads, disabled_optimizers, options=options)


def kernel_times(session, *, skip: int, runs: int) -> dict[str, float]:
    """Kernel milliseconds per run for each op type over the last `runs` calls of a
    `profiled_session`, the first `skip` calls dropped (warm-up, or calls at another
    batch); ends its profiling."""
    events = json.loads(Path(session.end_profiling()).read_text())
    calls: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            calls.setdefault(event["args"]["op_name"], []).append(event["dur"] / 1000)
    # each op's calls come in call order, the same number per call: drop the skipped calls'
    return {
        op: round(sum(times[len(times) * skip // (skip + runs) :]) / runs, 4)
        for op, times in calls.items()
    }


def time_split(quantized: dict[str, float], fp32: dict[str, float], top: int = 4) -> dict:
    """How the quantized model's kernel time divides between quantized kernels and the rest,
    and the speed-up over fp32 it could reach if its quantized kernels took no time."""
    quantized_ms = sum(
        ms for op, ms in quantized.items() if op.startswith(QUANTIZED_KERNEL_PREFIXES)
    )
    total = sum(quantized.values())
    rest = {op: ms for op, ms in quantized.items() if not op.startswith(QUANTIZED_KERNEL_PREFIXES)}
    other_ms = sum(rest.values())
    largest = sorted(rest.items(), key=lambda item: -item[1])[:top]
    return {
        "quantized_kernels_ms": round(quantized_ms, 3),
        "other_ms": round(other_ms, 3),
        "quantized_kernel_share": round(quantized_ms / total, 3) if total else 0.0,
        "largest_other_ops_ms": {op: round(ms, 3) for op, ms in largest},
        "fp32_kernels_ms": round(sum(fp32.values()), 3),
        "speedup_bound": round(sum(fp32.values()) / other_ms, 2) if other_ms else None,
    }
