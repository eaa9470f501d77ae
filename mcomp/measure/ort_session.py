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


# The most input bytes one call takes (all inputs together): the activations of a few large
# samples stay in the CPU's caches, and those of 16-64 images do not. The PP-OCR detector
# (320x320 images, one thread): 64 images in one call 2.7 s, three at a time 1.4 s; its
# int8 model 1.3 s vs 1.0 s; one at a time is slower again (per-call overhead). Models with
# small samples (token ids, text-line crops, short audio) keep their batch.
CALL_INPUT_BYTES = 4 * 2**20


def call_rows(feed: dict[str, np.ndarray]) -> int:
    """Samples per onnxruntime call for `feed` (samples on axis 0): as many as fit in
    `CALL_INPUT_BYTES`, at least one, at most the feed's.

    >>> call_rows({"x": np.zeros((64, 3, 320, 320), np.float32)})
    3
    >>> call_rows({"ids": np.zeros((64, 128), np.int64)})
    64
    """
    arrays = [np.asarray(value) for value in feed.values()]
    rows = len(arrays[0]) if arrays and arrays[0].ndim else 1
    per_sample = sum(array.nbytes for array in arrays) / max(rows, 1)
    return max(1, min(rows, int(CALL_INPUT_BYTES // max(per_sample, 1))))


def run_in_calls(
    session: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    names: list[str] | None = None,
) -> list[np.ndarray]:
    """`session.run(names, feed)` in calls of `call_rows(feed)` samples, each output joined
    along axis 0. An output that does not follow the calls' sample counts (a scalar, a
    time-major sequence) makes it one call of the whole feed instead."""
    lengths = {len(value) if np.ndim(value) else None for value in feed.values()}
    if len(lengths) != 1 or None in lengths:  # not one sample axis to split along
        return session.run(names, feed)
    rows, total = call_rows(feed), lengths.pop()
    if rows >= total:
        return session.run(names, feed)
    parts = []
    for start in range(0, total, rows):
        chunk = {name: value[start : start + rows] for name, value in feed.items()}
        outputs = [np.asarray(out) for out in session.run(names, chunk)]
        count = min(rows, total - start)
        if any(out.ndim == 0 or len(out) != count for out in outputs):
            return session.run(names, feed)
        parts.append(outputs)
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def batch_feed(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples of each input, repeated when the split has fewer."""
    feed = {}
    for name, array in inputs.items():
        reps = -(-batch // len(array))
        feed[name] = np.concatenate([array] * reps)[:batch] if reps > 1 else array[:batch]
    return feed
