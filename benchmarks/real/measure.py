"""Outputs, sizes and latency of every variant of one model, side by side in one process.

Every session is made by mcomp's own `create_session` (same options for all: `threads`
intra-op threads, no inter-op parallelism, every graph optimisation). Latency: each
session timed in its own block (warm-up, then timed runs) at batch 1 and at the model's
larger batch, with a short pause between blocks; ROUNDS rounds, the order rotated each
round; a figure is the median of the per-round medians, with their min-max spread.
onnxruntime's idle threads keep spinning after a run, so interleaving calls of two
sessions would slow both (FIELD.md); blocks avoid that.
"""

from __future__ import annotations

import statistics
import time
import zlib
from pathlib import Path

import numpy as np


def sizes(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "zlib_bytes": len(zlib.compress(data, 9))}


def outputs(session, name: str, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Every output of `session` on all of `x`, run `batch` samples at a time."""
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(None, {name: x[i : i + batch]}) for i in range(0, len(x), batch)]
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def _runs(session, feed: dict, seconds: float, least: int, most: int) -> int:
    """How many timed runs fill about `seconds` of this (fp32) session's time."""
    start = time.perf_counter()
    session.run(None, feed)
    session.run(None, feed)
    per_run = (time.perf_counter() - start) / 2
    return max(least, min(most, int(seconds / max(per_run, 1e-6))))


def latencies(
    sessions: dict[str, object], name: str, x: np.ndarray, batch: int, rounds: int, block_s: float
) -> tuple[dict, dict]:
    """{variant: {"b1": {...}, "bN": {...}}} with median, min, max of the per-round medians
    (ms), and the runs per block used at each batch."""
    from mcomp.measure.ort_session import batch_feed, time_session

    feeds = {"b1": batch_feed({name: x}, 1), f"b{batch}": batch_feed({name: x}, batch)}
    reference = sessions["fp32"]
    runs = {
        key: _runs(reference, feed, block_s, 5 if key == "b1" else 3, 400)
        for key, feed in feeds.items()
    }
    per_round = {label: {key: [] for key in feeds} for label in sessions}
    labels = list(sessions)
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            for key, feed in feeds.items():
                ms = time_session(sessions[label], feed, warmup=2, runs=runs[key])
                per_round[label][key].append(ms)
                time.sleep(0.1)
            time.sleep(0.2)
    table = {
        label: {
            key: {
                "median_ms": statistics.median(values),
                "min_ms": min(values),
                "max_ms": max(values),
                "rounds_ms": values,
            }
            for key, values in by_batch.items()
        }
        for label, by_batch in per_round.items()
    }
    return table, runs
