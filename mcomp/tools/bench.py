"""`mcomp bench`: onnxruntime CPU latency of an ONNX model per batch size, with throughput,
the session's peak memory and the CPU's instruction sets."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from mcomp.data.load import Split
from mcomp.errors import ModelLoadError
from mcomp.recipe.schema import ModelFormat


def bench_model(
    path: Path,
    *,
    batches: list[int],
    threads: int,
    warmup: int,
    runs: int,
    profile: bool = False,
    data: Split | None = None,
    data_name: str | None = None,
) -> dict[str, Any]:
    """Time each batch size in its own block (warm-up, then `runs` timed calls).

    Inputs are `data`'s samples (repeated up to the batch size) when given: random inputs
    of the signature make token models' timings unrealistic (integer inputs are zeros).

    Memory is the growth of the resident set from before the session is created to its peak
    during the runs: what deploying this model costs on top of the Python process.
    `profile`: also the kernel time per op type at the largest batch, from onnxruntime's
    profiler in a session of its own (after the timing, so it changes none of the figures).
    """
    from mcomp.measure.cpu_features import detect_cpu_features
    from mcomp.measure.ort_session import create_session
    from mcomp.measure.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from mcomp.model.open import ModelRef, detect_model_format, open_model

    if detect_model_format(path) != ModelFormat.ONNX:
        raise ModelLoadError(
            f"{path}: bench times ONNX models and this is a torch file; "
            "export it first (a recipe with an `export` stage), or use "
            "`mcomp compare`, which converts torch models"
        )
    state = open_model(ModelRef(path))
    import onnxruntime  # noqa: F401  (its import is the process's cost, not the session's)

    raw = state.onnx_model.SerializeToString()
    from mcomp.data.open import random_inputs
    from mcomp.run.memory import check_batch_fits

    for batch in batches:
        check_batch_fits(batch, random_inputs(state, 1), "--batch")
    feeds = _feeds(state, batches, data, threads)
    before = rss_bytes()
    exact_peak = reset_peak_rss()
    session = create_session(raw, threads, source=str(path))
    results = [_time_batch(session, feeds[batch], batch, warmup, runs) for batch in batches]
    peak = peak_rss_bytes()
    growth = peak - before if peak is not None and before is not None else None
    del session
    profiled = (
        _profile(raw, feeds[max(batches)], max(batches), threads, warmup, runs) if profile else None
    )
    return {
        "model": str(path),
        "size_bytes": len(raw),
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "cpu_isa": list(detect_cpu_features().names),
        "cpu_isa_source": detect_cpu_features().source,
        "inputs": [i.model_dump() for i in state.inputs],
        "inputs_from": data_name if data is not None else "random (integer inputs: zeros)",
        "batches": results,
        "memory": {
            "rss_before_bytes": before,
            "peak_rss_bytes": peak,
            "session_peak_bytes": max(0, growth) if growth is not None else None,
            "exact": exact_peak,
        },
        **({"profile": profiled} if profiled else {}),
    }


def _feeds(
    state, batches: list[int], data: Split | None, threads: int
) -> dict[int, dict[str, np.ndarray]]:
    from mcomp.data.open import fit_split, random_inputs
    from mcomp.measure.ort_session import batch_feed

    if data is None:
        return {batch: random_inputs(state, batch) for batch in batches}
    split = fit_split(state, data, threads)
    return {batch: batch_feed(split.inputs, batch) for batch in batches}


def _profile(
    raw: bytes, feed: dict[str, np.ndarray], batch: int, threads: int, warmup: int, runs: int
) -> dict[str, Any]:
    """Kernel milliseconds per op type, largest first, and the share in int8 (or 4-bit)
    kernels: where an int8 model's time goes when it is not faster than expected."""
    from mcomp.measure.ort_profile import QUANTIZED_KERNEL_PREFIXES, op_times

    times = op_times(raw, feed, threads, runs=min(runs, 10), warmup=min(warmup, 3))
    total = sum(times.values())
    ops = [
        {
            "op": op,
            "ms": round(ms, 4),
            "share": round(ms / total, 4) if total else 0.0,
            "quantized": op.startswith(QUANTIZED_KERNEL_PREFIXES),
        }
        for op, ms in sorted(times.items(), key=lambda item: -item[1])
    ]
    quantized = sum(row["ms"] for row in ops if row["quantized"])
    return {
        "batch": batch,
        "kernel_ms": round(total, 4),
        "quantized_kernel_share": round(quantized / total, 4) if total else 0.0,
        "ops": ops,
    }


def _time_batch(
    session, feed: dict[str, np.ndarray], batch: int, warmup: int, runs: int
) -> dict[str, Any]:
    from mcomp.measure.ort_session import run_timings

    timings = run_timings(session, feed, warmup=warmup, runs=runs)
    p50 = statistics.median(timings)
    return {
        "batch": batch,
        "p50_ms": round(p50, 4),
        "p90_ms": round(float(np.percentile(timings, 90)), 4),
        "mean_ms": round(statistics.fmean(timings), 4),
        "throughput_per_s": round(batch * 1000.0 / p50, 2) if p50 > 0 else None,
    }
