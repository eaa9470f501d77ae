"""Latency of every model of a run, timed side by side at the end of the run.

Timed right after each stage, minutes apart, the same model's latency moved up to 2.4x on a
shared CPU, so a pruning stage that cannot change latency showed x0.46 to x1.8. Here the
baseline and every stage's result are timed together once all stages ran: in rounds, every
model in its own block per round (a short pause, warm-up calls, then the timed calls; idle
onnxruntime threads keep spinning after a run, and interleaving single calls of two sessions
inflated both 2-4x), the order reversed every other round so that drift favours none. A
model's figure is the median of its round medians and its spread the lowest and the highest
round median. A fast model's block runs for at least `MIN_BLOCK_MS`, so that its median is
not one context switch's. Models with identical bytes (export after quantize) are timed once.

Many short rounds beat a few long ones: on a shared 2-core VM the speed of a block is
bimodal (the same session's block medians jump between two levels about 1.4x apart, block by
block), so the median of 5 round medians of one model could land on either level and six
identical quickstart runs reported an unstructured prune stage at x0.64 to x1.12. With 15
rounds of blocks of 15 ms, and the speed-up taken round by round (`mcomp.report.speedup`), the
same six runs stayed within x0.99-x1.01 (benchmarks/RESULTS.md, "latency honesty").

    stats = time_side_by_side([baseline_bytes, pruned_bytes], feeds, threads=1, rounds=5,
                              warmup=5, runs={"b1": 6, "batch": 3})
    stats[1]["b1"].median_ms, stats[1]["b1"].min_ms, stats[1]["b1"].max_ms
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcomp.progress import NullProgress, Progress

# Before every block when sessions run several threads: the previous session's spinning
# threads go idle. One thread has no pool to spin, and a pause lets the VM park the vCPU.
PAUSE_S = 0.02
REWARM_CALLS = 1  # warm-up calls of a session's later blocks; its first block does `warmup`
# With 15 rounds a slow model's block needs few calls: the median over rounds does the rest.
MIN_RUNS_PER_ROUND = {"b1": 3, "batch": 1}
# A block of a fast model lasts at least this long: 6 calls of 0.03 ms are at the mercy of
# one context switch, a few hundred are not. Slow models are not slowed down by it.
MIN_BLOCK_MS = 15.0
MAX_CALLS_PER_BLOCK = 5000


@dataclass(frozen=True)
class LatencyStats:
    """One model at one batch size: the median latency (ms) of each round."""

    rounds_ms: tuple[float, ...]
    calls_per_round: int = 0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rounds_ms)

    @property
    def min_ms(self) -> float:
        return min(self.rounds_ms)

    @property
    def max_ms(self) -> float:
        return max(self.rounds_ms)

    def as_dict(self) -> dict[str, Any]:
        """The report's form: median, spread and every round (rounded to 0.1 µs)."""
        return {
            "median_ms": round(self.median_ms, 4),
            "min_ms": round(self.min_ms, 4),
            "max_ms": round(self.max_ms, 4),
            "rounds_ms": [round(value, 4) for value in self.rounds_ms],
            "calls_per_round": self.calls_per_round,
        }


def runs_per_round(runs: int, rounds: int) -> dict[str, int]:
    """The fewest timed calls per block: `runs` at batch 1 (half as many at the larger
    batch) shared among the rounds, with a floor so that each round's median means
    something; fast models get more (`MIN_BLOCK_MS`)."""
    return {
        "b1": max(MIN_RUNS_PER_ROUND["b1"], -(-runs // rounds)),
        "batch": max(MIN_RUNS_PER_ROUND["batch"], -(-max(3, runs // 2) // rounds)),
    }


def time_side_by_side(
    models: Sequence[bytes],
    feeds: dict[str, dict[str, np.ndarray]],
    *,
    threads: int,
    rounds: int,
    warmup: int,
    runs: dict[str, int],
    progress: Progress | None = None,
) -> list[dict[str, LatencyStats]]:
    """Per model (in the order given), per feed label: its round medians.

    `feeds` maps a label ("b1", "batch") to the inputs; `runs` the same labels to the timed
    calls per block.
    """
    from mcomp.measure.ort_session import create_session

    progress = progress or NullProgress()
    digests = [hashlib.sha256(raw).hexdigest() for raw in models]
    distinct = list(dict.fromkeys(digests))
    first_of = {digest: digests.index(digest) for digest in distinct}
    sessions = [create_session(models[first_of[d]], threads) for d in distinct]
    timed: dict[str, dict[str, LatencyStats]] = {d: {} for d in distinct}
    progress.start("timing all models side by side", total=rounds * len(feeds))
    try:
        for label, feed in feeds.items():
            per_session = _rounds(sessions, feed, rounds, warmup, runs[label], threads, progress)
            for digest, figures in zip(distinct, per_session, strict=True):
                timed[digest][label] = figures
    finally:
        progress.finish()
    return [timed[digest] for digest in digests]


def _rounds(
    sessions: list,
    feed: dict[str, np.ndarray],
    rounds: int,
    warmup: int,
    runs: int,
    threads: int,
    progress,
) -> list[LatencyStats]:
    from mcomp.measure.ort_session import run_timings

    calls = [_calls_per_block(session, feed, warmup, runs, threads) for session in sessions]
    values: list[list[float]] = [[] for _ in sessions]
    for index in range(rounds):
        order = range(len(sessions)) if index % 2 == 0 else reversed(range(len(sessions)))
        for which in order:
            _pause(threads)
            block = run_timings(
                sessions[which], feed, warmup=min(warmup, REWARM_CALLS), runs=calls[which]
            )
            values[which].append(statistics.median(block))
        progress.advance()
    return [LatencyStats(tuple(v), n) for v, n in zip(values, calls, strict=True)]


def _pause(threads: int) -> None:
    """Let the previous session's spinning pool threads go idle (none with one thread)."""
    if threads > 1:
        time.sleep(PAUSE_S)


def _calls_per_block(
    session, feed: dict[str, np.ndarray], warmup: int, runs: int, threads: int
) -> int:
    """The session's warm-up, timed to size its blocks: at least `runs` calls and at least
    `MIN_BLOCK_MS` of them."""
    from mcomp.measure.ort_session import run_timings

    _pause(threads)
    per_call = statistics.median(run_timings(session, feed, warmup=0, runs=max(1, warmup)))
    wanted = math.ceil(MIN_BLOCK_MS / max(per_call, 1e-4))
    return max(runs, min(MAX_CALLS_PER_BLOCK, wanted))
