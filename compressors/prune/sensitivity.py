"""Per-layer pruning sensitivity (Distiller's sensitivity analysis), and the per-layer sparsity
it suggests for an overall target.

Each prunable layer is pruned alone at several ratios and the eval metric measured; layers
whose metric falls fast are sensitive. `allocate_sparsity` then gives sensitive layers less
sparsity for the same overall (parameter-weighted) target.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mcomp.errors import StageError
from mcomp.progress import Progress

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def analyze_sensitivity(
    state,
    ctx,
    options,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Prune each selected layer alone at each ratio; returns the metric per (layer, ratio).

    `options` are a prune stage's options (method, include/exclude, layer_types).
    """
    from mcomp.compressors.prune.options import select_prunable

    progress = progress or ctx.progress
    baseline = ctx.evaluate(state)
    layers = [name for name, _ in select_prunable(state.module, options, ctx.progress)]
    results: dict[str, Any] = {}
    progress.start("sensitivity", total=len(layers) * len(ratios))
    for name in layers:
        points = []
        for ratio in ratios:
            trial = state.with_module(copy.deepcopy(state.module))
            params = _prune_one(trial, name, ratio, options.method)
            value = ctx.evaluate(trial)
            points.append({"ratio": ratio, "metric": value, "drop": _drop(baseline, value, ctx)})
            progress.advance()
        results[name] = {"params": params, "points": points}
    progress.finish()
    return {
        "metric_name": ctx.metric.name,
        "higher_is_better": ctx.metric.higher_is_better,
        "baseline": baseline,
        "method": options.method,
        "ratios": list(ratios),
        "layers": results,
    }


def _drop(baseline: float, value: float, ctx) -> float:
    return baseline - value if ctx.metric.higher_is_better else value - baseline


def _prune_one(state, layer: str, ratio: float, method: str) -> int:
    """Prune one layer of `state` in place; returns that layer's weight count."""
    from mcomp.compressors.prune.magnitude import prune_magnitude
    from mcomp.model.module_names import strip_wrapper_prefix
    from mcomp.training.masks import weight_tensors

    modules = {strip_wrapper_prefix(n): m for n, m in state.module.named_modules()}
    module = modules[layer]
    weights = weight_tensors(layer, module)
    count = sum(weight.numel() for _, weight in weights)
    if method == "channel":
        _prune_channels_of(state, module, ratio)
        return count
    prune_magnitude([(layer, module)], sparsity=ratio, scope="layer")
    return count


def _prune_channels_of(state, module, ratio: float) -> None:
    from mcomp.compressors.prune.channel import prune_channels
    from mcomp.model.convert import example_inputs

    others = [
        m
        for m in state.module.modules()
        if m is not module and type(m).__name__ in ("Conv1d", "Conv2d", "Conv3d", "Linear")
    ]
    prune_channels(
        state.module,
        example_inputs(state, batch=1),
        ratio=ratio,
        target_macs_ratio=None,
        importance="l1",
        global_scope=False,
        ignored=others,
        round_to=None,
    )


def read_sensitivity(path: Path) -> dict[str, Any]:
    """A sensitivity.json written by `mcomp sensitivity`, checked for what the stage needs."""
    try:
        table = json.loads(path.read_text())
        table["layers"]  # noqa: B018  (the one key the prune stage needs)
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(
            f"prune.sensitivity: {path} is not a sensitivity.json written by "
            "`mcomp sensitivity RECIPE`; run it first"
        ) from None
    return table


def allocate_sparsity(
    analysis: dict[str, Any], target: float, layers: list[str]
) -> dict[str, float]:
    """Per-layer sparsities averaging `target` (weighted by parameters), least on the layers
    whose metric drops most.

    For a tolerance t every layer gets the largest ratio whose measured drop stays within t
    (linear between the measured ratios); t is bisected until the weighted mean hits target.
    """
    table = {name: analysis["layers"][name] for name in layers if name in analysis["layers"]}
    total = sum(entry["params"] for entry in table.values())

    def ratios_for(tolerance: float) -> dict[str, float]:
        return {name: _largest_ratio(entry["points"], tolerance) for name, entry in table.items()}

    def mean(ratios: dict[str, float]) -> float:
        return sum(ratios[n] * table[n]["params"] for n in table) / total

    low, high = 0.0, max(p["drop"] for e in table.values() for p in e["points"]) + 1e-9
    if mean(ratios_for(high)) < target:
        return {name: target for name in table}  # the analysis cannot tell layers apart here
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if mean(ratios_for(mid)) < target else (low, mid)
    ratios = ratios_for(high)
    scale = target / mean(ratios) if mean(ratios) > 0 else 1.0
    return {name: min(0.99, r * scale) for name, r in ratios.items()}


def _largest_ratio(points: list[dict[str, float]], tolerance: float) -> float:
    best, previous = 0.0, {"ratio": 0.0, "drop": 0.0}
    for point in points:
        if point["drop"] <= tolerance:
            best = point["ratio"]
        else:
            span = point["drop"] - previous["drop"]
            if span > 0 and previous["drop"] <= tolerance:
                fraction = (tolerance - previous["drop"]) / span
                best = previous["ratio"] + fraction * (point["ratio"] - previous["ratio"])
            break
        previous = point
    return best
