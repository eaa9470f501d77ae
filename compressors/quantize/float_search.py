"""The fallback's search for the fewest nodes to leave in float (static QDQ models).

    rank ─ every quantized node by its local error (one pass, all tensors exposed)
    search ─ float the top k by graph surgery (float_nodes.py, milliseconds, no calibration)
           ─ k doubling, then bisected, each candidate scored on the first `SUBSET_SAMPLES`
             eval samples against a subset goal
           ─ the smallest passing k confirmed on the whole eval split; a miss goes on above it

Scoring a candidate on a subset and confirming only the chosen one is what made the search
fit a minute on real CNNs: the first version evaluated every trial on the whole split, and
on a 3.5 M-parameter depthwise CNN its 120 s budget ran out after three trials. k grows
geometrically because the metric improves roughly monotonically with the float set: a
budget met by the top 12 nodes of 150 costs about eight candidates, not twelve.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mcomp.compressors.quantize.fallback import Search, Trial

SUBSET_SAMPLES = 128  # eval samples a candidate is scored on before the whole split
RANKING_SAMPLES = 32  # calibration samples the sensitivity ranking runs on


def rank_for_fallback(search: Search, analysed, fp32, skip: set[str]) -> list[dict]:
    """Quantized nodes of `analysed`, most sensitive first: dicts of name and local error.

    The local error alone, not the output error of quantizing each node alone: on the OCR
    direction classifier (benchmarks/real/ranking.py, 24 nodes against the whole eval
    split's KL with that node alone int8) the local ranking's Spearman correlation was 0.58,
    the 32-sample output ranking's 0.01, at one session per node more."""
    from mcomp.compressors.quantize.sensitivity import rank_nodes

    local = rank_nodes(
        search.prepared_path,
        analysed,
        search.ctx,
        mode="static",
        skip=skip,
        samples=RANKING_SAMPLES,
    )
    return [{"node": name, "local_error": score} for name, score in local]


class SubsetScorer:
    """The task metric on the first `SUBSET_SAMPLES` eval samples, and the goal there."""

    def __init__(self, search: Search) -> None:
        self.ctx, goal = search.ctx, search.goal
        self.count = min(SUBSET_SAMPLES, len(self.ctx.datasets.eval))
        self.whole = self.count >= len(self.ctx.datasets.eval)
        self.goal = goal
        if not self.whole:
            # the budget counts from the same model as the whole-split goal, measured here
            by_input = goal.source == "quantize.max_accuracy_drop"
            reference = self.metric(search.state if by_input else self.ctx.original)
            self.goal = dataclasses.replace(goal, reference=reference, input_metric=reference)

    def metric(self, state) -> float:
        from mcomp.measure.evaluate import evaluate_metric_on_first

        return evaluate_metric_on_first(state, self.ctx, self.count)


def float_search(search: Search, excluded: set[str], base: Trial, analysed, fp32) -> None:
    """Trials that leave the top-ranked nodes of `analysed` in float, appended to `search`;
    see the module docstring."""
    ranking = rank_for_fallback(search, analysed, fp32, set(base.excluded))
    search.sensitivity = ranking
    names = [row["node"] for row in ranking]
    limit = len(names) - 1  # never every node: a model with no int8 node is no quantization
    if limit < 1:
        return
    scorer = SubsetScorer(search)
    group = search.limits.group_size
    failing, passing = 0, None  # k known to miss the goal; smallest k known to meet it
    while True:
        if passing is not None and passing - failing <= group:
            trial = _confirm(search, excluded, base, analysed, fp32, names[:passing], scorer)
            if search.goal.met(trial.metric):
                return
            failing, passing = passing, None  # the subset flattered it: go on above
            continue
        if passing is None:
            if failing >= limit:
                return
            k = min(limit, max(group, 2 * failing))
        else:
            k = failing + max(group, ((passing - failing) // (2 * group)) * group)
        if not search.can_try():
            if passing is not None:  # time is up: still confirm the candidate in hand
                _confirm(search, excluded, base, analysed, fp32, names[:passing], scorer)
            return
        if _score(search, excluded, base, analysed, fp32, names[:k], scorer):
            passing = k
        else:
            failing = k


def _candidate(analysed, fp32, base: Trial, names: list[str]):
    from mcomp.compressors.quantize.float_nodes import with_nodes_in_float
    from mcomp.compressors.quantize.ort_quantize import QuantizedModel

    model = with_nodes_in_float(analysed, fp32, set(names))
    return QuantizedModel(
        model,
        base.options,
        calibration=base.result.calibration,
        float_outputs=base.result.float_outputs,
        bias_correction=base.result.bias_correction,
    )


def _label(excluded: set[str], base: Trial, names: list[str]) -> str:
    floated = (set(base.excluded) | set(names)) - excluded
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"float {len(floated)} node(s): {shown}"


def _score(search, excluded, base, analysed, fp32, names, scorer: SubsetScorer) -> bool:
    """Score the candidate that floats `names` on the subset (the whole split when the
    subset is all of it: then the trial is a full one)."""
    result = _candidate(analysed, fp32, base, names)
    label = _label(excluded, base, names)
    floated = set(base.excluded) | set(names)
    if scorer.whole:
        trial = search.record(label, floated, result)
        trial.edited = True
        return search.goal.met(trial.metric)
    started = time.perf_counter()
    metric = scorer.metric(search.state.with_onnx(result.model))
    search.record_subset(label, floated, result, metric, scorer.goal, started).edited = True
    return scorer.goal.met(metric)


def _confirm(search, excluded, base, analysed, fp32, names, scorer: SubsetScorer) -> Trial:
    """The candidate that floats `names` evaluated on the whole eval split."""
    floated = set(base.excluded) | set(names)
    for trial in reversed(search.trials):
        if trial.scope == "eval" and trial.excluded == frozenset(floated):
            return trial  # already scored on the whole split (a subset that is all of it)
    result = _candidate(analysed, fp32, base, names)
    trial = search.record(_label(excluded, base, names), floated, result)
    trial.edited = True
    return trial


def spearman(first: list[float], second: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long score lists (None under 3 items)."""
    if len(first) < 3 or len(first) != len(second):
        return None
    ranks = [np.argsort(np.argsort(np.asarray(v, np.float64))) for v in (first, second)]
    a, b = (r - r.mean() for r in ranks)
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator else None
