"""onnxruntime sessions with deliberate thread settings, and latency timing."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort


def create_session(
    model_bytes: bytes,
    threads: int,
    disabled_optimizers: list[str] | None = None,
    *,
    options: ort.SessionOptions | None = None,
    source: str | None = None,
) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads and no inter-op parallelism;
    `disabled_optimizers` names onnxruntime graph optimizers to skip. `options`, from
    `session_options`, lets a caller add settings (profiling) to the same ones. `source`:
    the user's model file, named in the ModelLoadError raised when onnxruntime refuses it."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            model_bytes,
            options or session_options(threads),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled_optimizers,
        )
    except Exception as exc:
        if source is None:
            raise
        from mcomp.errors import ModelLoadError

        # onnx.checker accepts models onnxruntime refuses: an op it has no kernel for (custom
        # domains are not checked), an opset newer than it knows
        lines = str(exc).strip().splitlines()
        reason = lines[-1][:300] if lines else type(exc).__name__
        raise ModelLoadError(
            f"onnxruntime cannot load {source} ({reason}); "
            "mcomp measures and quantizes models with onnxruntime's CPU "
            "provider, so every op must be one it runs"
        ) from None


def session_options(threads: int) -> ort.SessionOptions:
    """mcomp's session settings: `threads` intra-op threads, no inter-op parallelism, every
    graph optimisation, warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def time_session(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], *, warmup: int, runs: int
) -> float:
    """Median latency in milliseconds of `runs` timed calls after `warmup` untimed ones.

    Each session is timed in its own block (warm-up, then timed runs): interleaving calls of
    two sessions inflated latencies 2-4x on these machines because idle threads keep spinning.
    """
    return statistics.median(run_timings(session, feed, warmup=warmup, runs=runs))


def run_timings(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], *, warmup: int, runs: int
) -> list[float]:
    """Milliseconds of each of `runs` timed calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def batch_feed(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples of each input, repeated when the split has fewer."""
    feed = {}
    for name, array in inputs.items():
        reps = -(-batch // len(array))
        feed[name] = np.concatenate([array] * reps)[:batch] if reps > 1 else array[:batch]
    return feed
