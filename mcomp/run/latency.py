"""The run's latency figures: every model timed side by side once all stages ran.

The pipeline keeps each model's ONNX bytes as it measures the other figures, then hands them
here. Every entry's `metrics` gets the medians (`latency_ms_b1`, `latency_ms_batch`), their
spread (`latency`) and, for stages, the speed-up over the baseline with its interval
(`speedup`); the report gets one `latency` block saying how the figures were timed and how
busy the machine was meanwhile. A quantize stage's verdict "int8 is not faster" is worded
here from the same figures (the stage's own quick check stays a stage detail).
"""

from __future__ import annotations

from typing import Any

from mcomp.recipe.schema import LatencySpec
from mcomp.report.speedup import LABELS, speedup_between

METHOD = "side by side at the end of the run"


def time_run_models(
    entries: list[dict[str, Any]], models: list[bytes], ctx, spec: LatencySpec
) -> dict[str, Any]:
    """Time `models[i]` for `entries[i]` (the baseline first) and fill in their figures;
    returns the report's `latency` block."""
    if not spec.enabled:
        for entry in entries:
            entry["metrics"]["latency_batch"] = spec.batch
        return {"enabled": False}
    from mcomp.measure.machine_load import LoadProbe, busy_warning
    from mcomp.measure.ort_session import batch_feed
    from mcomp.measure.side_by_side import MIN_BLOCK_MS, runs_per_round, time_side_by_side

    inputs = ctx.datasets.eval.inputs
    feeds = {"b1": batch_feed(inputs, 1), "batch": batch_feed(inputs, spec.batch)}
    runs = runs_per_round(spec.runs, spec.rounds)
    probe = LoadProbe.start()
    stats = time_side_by_side(
        models,
        feeds,
        threads=ctx.threads,
        rounds=spec.rounds,
        warmup=spec.warmup,
        runs=runs,
        progress=ctx.progress,
    )
    load = probe.stop()
    _fill_in(entries, stats, spec.batch)
    warning = busy_warning(load)
    if warning:
        ctx.progress.warn(f"latency: {warning}")
    for previous, entry in zip(entries, entries[1:], strict=False):
        _int8_verdict(previous, entry, spec.batch, ctx.progress)
    return {
        "enabled": True,
        "method": METHOD,
        "rounds": spec.rounds,
        "warmup": spec.warmup,
        "min_calls_per_round": runs,
        "min_block_ms": MIN_BLOCK_MS,
        "batch": spec.batch,
        "threads": ctx.threads,
        "models_timed": len(set(models)),
        "machine": load,
        "busy_warning": warning,
    }


def _fill_in(entries: list[dict[str, Any]], stats: list, batch: int) -> None:
    """Every entry's medians and spread, and each stage's speed-up over the baseline."""
    for entry, figures in zip(entries, stats, strict=True):
        metrics = entry["metrics"]
        metrics["latency_ms_b1"] = round(figures["b1"].median_ms, 4)
        metrics["latency_ms_batch"] = round(figures["batch"].median_ms, 4)
        metrics["latency_batch"] = batch
        metrics["latency"] = {label: figures[label].as_dict() for label in LABELS}
    base = entries[0]["metrics"]
    for entry in entries[1:]:
        entry["metrics"]["speedup"] = {
            label: speedup_between(base, entry["metrics"], label).as_dict() for label in LABELS
        }


def _int8_verdict(previous: dict[str, Any], entry: dict[str, Any], batch: int, progress) -> None:
    """A quantize stage's result against its fp32 input at the larger batch: a note and a
    warning when it is not measurably faster, with the stage's advice on what to try."""
    details = entry.get("details") or {}
    advice = details.get("speed_advice")
    if advice is None:  # not a quantizing stage
        return
    ratio = speedup_between(previous["metrics"], entry["metrics"], "batch")
    if ratio is None or (ratio.resolved and ratio.value > 1):
        return
    kind = "4-bit" if details.get("mode") == "weight4" else "int8"
    found = "slower than" if ratio.resolved else "not measurably faster than"
    message = (
        f"{kind} is {found} its fp32 input at batch {batch} "
        f"(×{ratio.value:.2f}, {ratio.low:.2f}–{ratio.high:.2f} over the rounds, timed side "
        f"by side); {advice}"
    )
    entry["notes"].append(message)
    progress.warn(f"{entry['name']}: {message}")
