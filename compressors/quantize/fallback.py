"""Accuracy-aware fallback of the quantize stage: meet a metric budget by leaving the most
sensitive nodes in float.

    - quantize:
        max_accuracy_drop: 0.01     # default: the recipe's constraints.max_accuracy_drop
        fallback: {max_trials: 8, max_seconds: 120, group_size: 1, alternatives: true}

After the first quantization the metric is evaluated. When the drop breaks the budget, the
search tries, in order and within the trial/time budget:

1. cheap alternatives (`alternatives: true`): per-channel weights (when off), then the
   calibration methods not yet used (static mode: minmax, percentile, mse, entropy; a
   candidate auto calibration made already is scored, not quantized again). Entropy
   calibration clips an outlier activation range that minmax and percentile keep whole: on
   the test suite's outlier MLP it alone took accuracy from 0.28 back to 1.00 with no node
   in float;
2. leaving nodes in float, most sensitive first. Static mode (float_search.py): every node
   ranked by its local error (`onnxruntime.quantization.qdq_loss_debug`'s measure: its output's
   relative error minus the largest of its inputs'), the top ones again by their error at the
   model's output; candidates made by graph surgery and scored on an eval subset, the chosen
   one confirmed on the whole split. Dynamic mode: the local ranking, `group_size` more nodes
   per trial, each a new quantization scored on the whole split.

Trials count against `max_trials` first and `max_seconds` second; a trial is not started
once the time is spent (the candidate in hand is still confirmed). The best model found is
always returned (the fewest float nodes that meet the budget, else the best metric);
`details.fallback` lists every trial's metric, where it was scored and its float nodes, the
sensitivity ranking, and the latency of the chosen model against the all-int8 one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.compressors.quantize.auto_calibration import quantize_once

if TYPE_CHECKING:
    from mcomp.compressors.quantize.options import QuantizeOptions
    from mcomp.compressors.quantize.ort_quantize import PreparedModel, QuantizedModel
    from mcomp.model.state import ModelState
    from mcomp.stage import StageContext

TOLERANCE = 1e-9  # the same slack as mcomp.report.constraints
SENSITIVITY_SAMPLES = 64
TIMING_BATCH = 8  # a detector's 64-image batch alone took gigabytes
SENSITIVITY_ROWS = 20  # nodes of the ranking the report lists
ALTERNATIVE_METHODS = ("minmax", "percentile", "mse", "entropy")  # in the order tried


@dataclass
class Goal:
    """The metric to reach: `reference` minus `budget` (plus, for lower-is-better metrics)."""

    reference: float
    input_metric: float
    budget: float
    higher_is_better: bool
    source: str

    def drop(self, metric: float) -> float:
        return self.reference - metric if self.higher_is_better else metric - self.reference

    def met(self, metric: float) -> bool:
        return self.drop(metric) <= self.budget + TOLERANCE


def accuracy_goal(model: ModelState, options: QuantizeOptions, ctx: StageContext) -> Goal | None:
    """The metric the quantized model must reach, or None when no budget is known.

    An explicit `max_accuracy_drop` counts from the stage's fp32 input; the recipe's
    constraint counts from the run's baseline, as the pipeline checks it at the end."""
    if options.max_accuracy_drop is None and ctx.accuracy_budget is None:
        return None  # no budget: nothing to evaluate before quantizing
    higher = ctx.metric.higher_is_better
    # the baseline measured the original model already (on the PP-OCR detector each
    # evaluation of the eval split costs 6 s)
    original = ctx.original_metric
    if original is None and (model is ctx.original or options.max_accuracy_drop is None):
        original = ctx.evaluate(ctx.original)
    input_metric = original if model is ctx.original else ctx.evaluate(model)
    if options.max_accuracy_drop is not None:
        return Goal(
            input_metric,
            input_metric,
            options.max_accuracy_drop,
            higher,
            "quantize.max_accuracy_drop",
        )
    return Goal(
        original,
        input_metric,
        ctx.accuracy_budget,
        higher,
        "constraints.max_accuracy_drop",
    )


@dataclass
class Trial:
    label: str
    excluded: frozenset[str]
    metric: float
    result: QuantizedModel = field(repr=False)
    scope: str = "eval"  # "subset": scored on the first eval samples, against `drop`
    drop: float | None = None  # a subset trial's drop against the subset's goal
    seconds: float = 0.0
    edited: bool = False  # made by graph surgery on a QDQ stand-in (float_search.py)
    reused: bool = False  # a model auto calibration had made already (not quantized again)

    @property
    def options(self) -> QuantizeOptions:
        return self.result.options


@dataclass
class FallbackResult:
    """The chosen quantization, the nodes it leaves in float, report facts and notes."""

    chosen: QuantizedModel
    excluded: set[str]
    facts: dict[str, Any]
    notes: list[str]


class Search:
    """The trials of one fallback search, within its trial and time budget."""

    def __init__(
        self,
        prepared: PreparedModel,
        state: ModelState,
        ctx: StageContext,
        *,
        options: QuantizeOptions,
        mode: str,
        goal: Goal,
    ) -> None:
        self.prepared, self.prepared_path, self.state, self.ctx = (
            prepared,
            prepared.path,
            state,
            ctx,
        )
        self.options, self.mode, self.goal = options, mode, goal
        self.limits = options.fallback
        self.trials: list[Trial] = []
        self.sensitivity: list[dict] = []  # the static search's ranking, for the report
        self.started = time.perf_counter()

    def record(self, label: str, excluded, result: QuantizedModel, started=None) -> Trial:
        """Score `result` on the whole eval split as a trial."""
        started = time.perf_counter() if started is None else started
        metric = self.ctx.evaluate(self.state.with_onnx(result.model))
        trial = Trial(label, frozenset(excluded), metric, result)
        trial.seconds = time.perf_counter() - started
        self.trials.append(trial)
        self._log(trial, self.goal.drop(metric), "")
        return trial

    def record_subset(self, label, excluded, result, metric: float, goal: Goal, started):
        """A trial scored on an eval subset against `goal`, the subset's goal."""
        trial = Trial(label, frozenset(excluded), metric, result, "subset", goal.drop(metric))
        trial.seconds = time.perf_counter() - started
        self.trials.append(trial)
        self._log(trial, trial.drop, " on the subset")
        return trial

    def _log(self, trial: Trial, drop: float, where: str) -> None:
        self.ctx.progress.log(
            f"quantize fallback: {trial.label}: {self.ctx.metric.name} {trial.metric:.4f}"
            f"{where} (drop {drop:+.4f}, budget {self.goal.budget})"
        )

    def can_try(self, seconds: float = 0.0) -> bool:
        """Whether another trial fits: trials first, then time (`seconds`: what the trial
        is expected to take)."""
        elapsed = time.perf_counter() - self.started
        return (
            len(self.trials) - 1 < self.limits.max_trials
            and elapsed + seconds < self.limits.max_seconds
        )

    def quantize(self, target: Path, options: QuantizeOptions, excluded: set[str]):
        return quantize_once(
            self.prepared, target, options, mode=self.mode, excluded=excluded, ctx=self.ctx
        )

    def attempt(self, label: str, options: QuantizeOptions, excluded: set[str]) -> Trial:
        target = self.prepared_path.parent / f"trial{len(self.trials)}.onnx"
        started = time.perf_counter()
        return self.record(label, excluded, self.quantize(target, options, excluded), started)

    def scored(self) -> list[Trial]:
        return [t for t in self.trials if t.scope == "eval"]

    def best(self) -> Trial:
        """Among the trials scored on the whole split: the fewest nodes in float that meet
        the goal, then the best metric; else the best metric."""
        passing = [t for t in self.scored() if self.goal.met(t.metric)]
        if passing:
            return min(passing, key=lambda t: (len(t.excluded), self.goal.drop(t.metric)))
        return self.closest()

    def closest(self) -> Trial:
        return min(self.scored(), key=lambda t: self.goal.drop(t.metric))


def fallback_search(
    prepared: PreparedModel,
    *,
    first: QuantizedModel,
    options: QuantizeOptions,
    excluded: set[str],
    state: ModelState,
    goal: Goal,
    ctx: StageContext,
    mode: str,
) -> FallbackResult:
    """Search for a quantization within `goal`, starting from the plain one (`first`)."""
    search = Search(prepared, state, ctx, options=options, mode=mode, goal=goal)
    plain = search.record("plain", excluded, first)
    facts: dict[str, Any] = {
        "budget": goal.budget,
        "budget_from": goal.source,
        "reference_metric": round(goal.reference, 6),
        "fp32_input_metric": round(goal.input_metric, 6),
    }
    if goal.met(plain.metric):
        facts.update(needed=False, trials=_trial_rows(search))
        return FallbackResult(first, excluded, facts, [])
    if not goal.met(goal.input_metric):
        message = (
            f"fallback cannot meet {goal.source}={goal.budget}: even with every node "
            f"in float (the fp32 input) the drop is {goal.drop(goal.input_metric):.4f}; "
            "keeping the plain int8 model"
        )
        ctx.progress.warn(f"quantize: {message}")
        facts.update(needed=True, met=False, message=message, trials=_trial_rows(search))
        return FallbackResult(first, excluded, facts, [message])
    trial = _cheap_alternatives(search, excluded) if options.fallback.alternatives else plain
    if not goal.met(trial.metric) and search.can_try():
        _exclude_sensitive(search, excluded)
    chosen = search.best()
    met = goal.met(chosen.metric)
    seconds = round(time.perf_counter() - search.started, 2)
    result = _in_requested_format(search, chosen, options)
    facts.update(
        needed=True,
        met=met,
        chosen=chosen.label,
        trials=_trial_rows(search),
        float_nodes=sorted(chosen.excluded - excluded),
        seconds=seconds,
        sensitivity=search.sensitivity[:SENSITIVITY_ROWS],
        latency_cost=(
            _latency_cost(plain.result.model, result.model, ctx) if chosen is not plain else None
        ),
    )
    if met:
        notes = [
            f"fallback: {len(chosen.excluded - excluded)} node(s) left in float "
            f"to meet {goal.source}={goal.budget} ({chosen.label})"
        ]
    else:
        message = (
            f"fallback: {goal.source}={goal.budget} not met within {len(search.trials)} "
            f"trial(s) / {facts['seconds']} s; best drop {goal.drop(chosen.metric):.4f} "
            f"({chosen.label}); raise fallback.max_trials or max_seconds, or group_size"
        )
        facts["message"] = message
        notes = [message]
        ctx.progress.warn(f"quantize: {message}")
    return FallbackResult(result, set(chosen.excluded), facts, notes)


def _in_requested_format(search: Search, chosen: Trial, options: QuantizeOptions):
    """The chosen trial's model; quantized again with its float nodes excluded when the
    search edited a QDQ stand-in for a QOperator model."""
    if not chosen.edited or options.format == "qdq":
        return chosen.result
    target = search.prepared_path.parent / "chosen.onnx"
    return search.quantize(target, chosen.options, set(chosen.excluded))


def _cheap_alternatives(search: Search, excluded: set[str]) -> Trial:
    """Per-channel weights, then the calibration methods the first quantization did not use;
    the best trial."""
    options = search.options
    variants = []
    if not options.per_channel:
        variants.append(("per_channel", {"per_channel": True}))
    if search.mode == "static":
        # auto ranked its candidates by output error; the budget is on the metric, so the
        # methods it did not keep are still worth a trial. mse and entropy share one
        # histogram pass; on the real models each was the best of the five methods for
        # some model (benchmarks/real/calibration_methods.py), mean_minmax for none
        chosen = search.trials[0].options.calibration.method
        for method in ALTERNATIVE_METHODS:
            if chosen != method:
                calibration = options.calibration.model_copy(update={"method": method})
                variants.append(
                    (f"calibration {method}", {"per_channel": True, "calibration": calibration})
                )
    first = search.trials[0]
    for label, update in variants:
        method = update.get("calibration")
        # auto calibration quantized its other candidates already: only scoring is left
        ready = first.result.runners_up.get(method.method) if method else None
        if ready is not None and first.options.per_channel:
            if not search.can_try():
                break
            trial = search.record(label, excluded, ready)
            trial.reused = True
        else:
            # a new calibration costs about what the first quantization did
            if not search.can_try(first.seconds):
                break
            trial = search.attempt(label, options.model_copy(update=update), excluded)
        if search.goal.met(trial.metric):
            return trial
    return search.closest()


def _exclude_sensitive(search: Search, excluded: set[str]) -> None:
    """Put the most sensitive nodes back in float until the goal holds (trials appended)."""
    import onnx

    from mcomp.compressors.quantize.float_search import float_search

    base = search.closest()
    if search.mode != "static":
        _float_by_quantizing(search, excluded, base)
        return
    analysed = base.result.model
    if base.options.format != "qdq":  # surgery and names work on QDQ models only
        target = search.prepared_path.parent / "sensitivity.qdq.onnx"
        qdq = base.options.model_copy(update={"format": "qdq"})
        analysed = search.quantize(target, qdq, set(base.excluded)).model
    float_search(search, excluded, base, analysed, onnx.load(str(search.prepared_path)))


def _float_by_quantizing(search: Search, excluded: set[str], base: Trial) -> None:
    """Dynamic mode: the nodes by local error, `group_size` more per trial, each trial a
    new quantization (dynamic models have no Q/DQ pairs to edit)."""
    from mcomp.compressors.quantize.sensitivity import rank_nodes

    analysed = base.result.model
    ranking = rank_nodes(
        search.prepared_path,
        analysed,
        search.ctx,
        mode=search.mode,
        skip=set(base.excluded),
        samples=SENSITIVITY_SAMPLES,
    )
    search.sensitivity = [{"node": name, "local_error": score} for name, score in ranking]
    floated = set(base.excluded)
    group = search.limits.group_size
    trial = base
    # never every candidate: a model with no int8 node left is not a quantization
    for start in range(0, max(0, len(ranking) - 1), group):
        if not search.can_try():
            break
        names = [name for name, _ in ranking[start : start + group]]
        floated |= _with_gemm_alias(names, search.mode)
        trial = search.attempt(
            f"float {len(floated - excluded)} node(s): +{', '.join(names)}", base.options, floated
        )
        if search.goal.met(trial.metric):
            break


def _with_gemm_alias(names: list[str], mode: str) -> set[str]:
    # dynamic mode quantizes the MatMul that gemm_to_matmul made of a Gemm (name + "_matmul")
    if mode != "dynamic":
        return set(names)
    return {n[: -len("_matmul")] if n.endswith("_matmul") else n for n in names} | set(names)


def _trial_rows(search: Search) -> list[dict[str, Any]]:
    return [
        {
            "label": t.label,
            "metric": round(t.metric, 6),
            "drop": round(search.goal.drop(t.metric) if t.drop is None else t.drop, 6),
            "scored_on": t.scope,
            "float_nodes": len(t.excluded),
            "per_channel": t.options.per_channel,
            "calibration": t.options.calibration.method,
            "seconds": round(t.seconds, 2),
            "reused": t.reused,
        }
        for t in search.trials
    ]


def _latency_cost(all_int8, chosen, ctx: StageContext) -> dict[str, float] | None:
    """Median ms of the all-int8 and the chosen model at `TIMING_BATCH`, each in its own
    block."""
    from mcomp.compressors.quantize.int8_check import (
        SPEED_CHECK_RUNS,
        SPEED_CHECK_WARMUP,
        time_both,
    )
    from mcomp.measure.ort_session import batch_feed

    split = ctx.datasets.eval or ctx.datasets.first_available()
    names = [value.name for value in all_int8.graph.input]
    if not all(name in split.inputs for name in names):
        return None
    feed = batch_feed({name: split.inputs[name] for name in names}, TIMING_BATCH)
    # as many calls as the stage's speed check: a report detail, not the run's timing
    speed = time_both(
        all_int8.SerializeToString(),
        chosen.SerializeToString(),
        feed,
        threads=ctx.threads,
        warmup=SPEED_CHECK_WARMUP,
        runs=SPEED_CHECK_RUNS,
    )
    return {
        "batch": TIMING_BATCH,
        "all_int8_ms": speed["fp32_ms"],
        "chosen_ms": speed["int8_ms"],
        "chosen_over_all_int8": round(speed["int8_ms"] / speed["fp32_ms"], 3),
    }
