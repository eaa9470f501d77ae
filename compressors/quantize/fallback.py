"""Accuracy-aware fallback of the quantize stage: meet a metric budget by leaving the most
sensitive nodes in float.

    - quantize:
        max_accuracy_drop: 0.01     # default: the recipe's constraints.max_accuracy_drop
        fallback: {max_trials: 8, max_seconds: 120, group_size: 1, alternatives: true}

After the first quantization the metric is evaluated. When the drop breaks the budget, the
search tries, in order and within the trial/time budget:

1. cheap alternatives (`alternatives: true`): per-channel weights (when off), then the
   calibration methods not yet used (static mode). Entropy calibration clips an outlier
   activation range that minmax and percentile keep whole: on the test suite's outlier MLP it
   alone took accuracy from 0.28 back to 1.00 with no node in float;
2. leaving nodes in float, most sensitive first, `group_size` more per trial. Sensitivity is
   the local quantization error of a node, as `onnxruntime.quantization.qdq_loss_debug` measures
   it: both models run with every intermediate tensor exposed (`quantize_sensitivity`), and a
   node's score is the relative error of its output minus the largest relative error of its
   inputs, so error a node merely inherits from upstream does not count against it.

The best model found is always returned (the first that meets the budget, else the best
metric); `details.fallback` lists every trial's metric and excluded nodes, and the latency of
the chosen model against the all-int8 one.
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
TIMING_BATCH = 64


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
    input_metric = ctx.evaluate(model)
    if options.max_accuracy_drop is not None:
        return Goal(
            input_metric,
            input_metric,
            options.max_accuracy_drop,
            higher,
            "quantize.max_accuracy_drop",
        )
    return Goal(
        ctx.evaluate(ctx.original),
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


class _Search:
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
        self.started = time.perf_counter()

    def record(self, label: str, excluded, result: QuantizedModel) -> Trial:
        metric = self.ctx.evaluate(self.state.with_onnx(result.model))
        trial = Trial(label, frozenset(excluded), metric, result)
        self.trials.append(trial)
        self.ctx.progress.log(
            f"quantize fallback: {label}: {self.ctx.metric.name} "
            f"{metric:.4f} (drop {self.goal.drop(metric):+.4f}, budget "
            f"{self.goal.budget})"
        )
        return trial

    def can_try(self) -> bool:
        return (
            len(self.trials) - 1 < self.limits.max_trials
            and time.perf_counter() - self.started < self.limits.max_seconds
        )

    def quantize(self, target: Path, options: QuantizeOptions, excluded: set[str]):
        return quantize_once(
            self.prepared, target, options, mode=self.mode, excluded=excluded, ctx=self.ctx
        )

    def attempt(self, label: str, options: QuantizeOptions, excluded: set[str]) -> Trial:
        target = self.prepared_path.parent / f"trial{len(self.trials)}.onnx"
        return self.record(label, excluded, self.quantize(target, options, excluded))

    def best(self) -> Trial:
        passing = [t for t in self.trials if self.goal.met(t.metric)]
        if passing:  # fewest nodes in float, then the best metric
            return min(passing, key=lambda t: (len(t.excluded), self.goal.drop(t.metric)))
        return min(self.trials, key=lambda t: self.goal.drop(t.metric))

    def closest(self) -> Trial:
        return min(self.trials, key=lambda t: self.goal.drop(t.metric))


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
    search = _Search(prepared, state, ctx, options=options, mode=mode, goal=goal)
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
    facts.update(
        needed=True,
        met=met,
        chosen=chosen.label,
        trials=_trial_rows(search),
        float_nodes=sorted(chosen.excluded - excluded),
        seconds=round(time.perf_counter() - search.started, 2),
        latency_cost=_latency_cost(plain.result.model, chosen.result.model, ctx),
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
    return FallbackResult(chosen.result, set(chosen.excluded), facts, notes)


def _cheap_alternatives(search: _Search, excluded: set[str]) -> Trial:
    """Per-channel weights, then the calibration methods the first quantization did not use;
    the best trial."""
    options = search.options
    variants = []
    if not options.per_channel:
        variants.append(("per_channel", {"per_channel": True}))
    if search.mode == "static":
        # auto ranked minmax and percentile by output error; the budget is on the metric, so
        # the method it did not keep is still worth a trial
        chosen = search.trials[0].options.calibration.method
        for method in ("minmax", "percentile", "entropy"):
            if chosen != method:
                calibration = options.calibration.model_copy(update={"method": method})
                variants.append(
                    (f"calibration {method}", {"per_channel": True, "calibration": calibration})
                )
    for label, update in variants:
        if not search.can_try():
            break
        trial = search.attempt(label, options.model_copy(update=update), excluded)
        if search.goal.met(trial.metric):
            return trial
    return search.closest()


def _exclude_sensitive(search: _Search, excluded: set[str]) -> Trial:
    """Put the most sensitive nodes back in float, a group per trial, until the goal holds."""
    from mcomp.compressors.quantize.sensitivity import rank_nodes

    base = search.closest()
    analysed = base.result.model
    if search.mode == "static" and base.options.format != "qdq":  # names are kept in QDQ only
        target = search.prepared_path.parent / "sensitivity.qdq.onnx"
        qdq = base.options.model_copy(update={"format": "qdq"})
        analysed = search.quantize(target, qdq, set(base.excluded)).model
    ranking = rank_nodes(
        search.prepared_path,
        analysed,
        search.ctx,
        mode=search.mode,
        skip=set(base.excluded),
        samples=SENSITIVITY_SAMPLES,
    )
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
    return trial


def _with_gemm_alias(names: list[str], mode: str) -> set[str]:
    # dynamic mode quantizes the MatMul that gemm_to_matmul made of a Gemm (name + "_matmul")
    if mode != "dynamic":
        return set(names)
    return {n[: -len("_matmul")] if n.endswith("_matmul") else n for n in names} | set(names)


def _trial_rows(search: _Search) -> list[dict[str, Any]]:
    return [
        {
            "label": t.label,
            "metric": round(t.metric, 6),
            "drop": round(search.goal.drop(t.metric), 6),
            "float_nodes": len(t.excluded),
            "per_channel": t.options.per_channel,
            "calibration": t.options.calibration.method,
        }
        for t in search.trials
    ]


def _latency_cost(all_int8, chosen, ctx: StageContext) -> dict[str, float] | None:
    """Median ms of the all-int8 and the chosen model at batch 64, each in its own block."""
    from mcomp.compressors.quantize.int8_check import time_both
    from mcomp.measure.ort_session import batch_feed

    split = ctx.datasets.eval or ctx.datasets.first_available()
    names = [value.name for value in all_int8.graph.input]
    if not all(name in split.inputs for name in names):
        return None
    feed = batch_feed({name: split.inputs[name] for name in names}, TIMING_BATCH)
    speed = time_both(
        all_int8.SerializeToString(), chosen.SerializeToString(), feed, threads=ctx.threads
    )
    return {
        "batch": TIMING_BATCH,
        "all_int8_ms": speed["fp32_ms"],
        "chosen_ms": speed["int8_ms"],
        "chosen_over_all_int8": round(speed["int8_ms"] / speed["fp32_ms"], 3),
    }
