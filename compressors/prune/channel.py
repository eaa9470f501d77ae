"""Structured pruning: remove whole channels/neurons so the model is physically smaller.

Used by the `prune` stage with `method: channel`. Coupled layers (BatchNorm, the next layer's
inputs, residual additions, concatenations, depthwise/grouped convolutions) are pruned together
through Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023) rather than a
hand-written graph walk, which is where hand-made structured pruners break.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcomp.compressors.prune.batchnorm import FoldedImportance, conv_bn_pairs
from mcomp.compressors.prune.channel_allocation import (
    MAX_LAYER_RATIO,
    allocate,
    channels_of,
    importance_groups,
    ratio_dict,
)
from mcomp.errors import StageError

if TYPE_CHECKING:
    import torch

    from mcomp.compressors.prune.options import PruneOptions
    from mcomp.model.state import ModelState
    from mcomp.stage import StageContext


def prune_channels(
    module: torch.nn.Module,
    example: tuple,
    *,
    ratio: float | None,
    target_macs_ratio: float | None,
    importance: str,
    global_scope: bool,
    ignored: list[torch.nn.Module],
    round_to: int | None,
    grad_batches: list[tuple[tuple, Any]] | None = None,
    loss_fn=None,
    kept_rows: dict | None = None,
) -> dict[str, Any]:
    """Prune `module` in place; returns MACs/params before and after and the ratio used.
    `kept_rows`, when given, is filled with {layer: the original output channels it keeps, in
    order} for every Conv/Linear layer (what the refit after pruning needs)."""
    import torch_pruning as tp

    macs_before, params_before = tp.utils.count_ops_and_params(module, example)
    shrinkable = _shrinkable(module, ignored)
    channels_before = channels_of(shrinkable)
    if target_macs_ratio is not None:
        ratio = _ratio_for_macs(
            module,
            example,
            target_macs_ratio,
            importance,
            global_scope,
            ignored,
            round_to,
            grad_batches,
            loss_fn,
        )
    if importance == "taylor":  # before the pruner: a global allocation ranks when it is made
        _accumulate_gradients(module, grad_batches, loss_fn)
    pruner = _pruner(module, example, ratio, importance, global_scope, ignored, round_to)
    kept = _step_recording(pruner, shrinkable + ignored)
    if kept_rows is not None:
        kept_rows.update(kept)
    module.zero_grad(set_to_none=True)
    macs_after, params_after = tp.utils.count_ops_and_params(module, example)
    return {
        "channel_ratio": round(ratio, 4),
        # what was removed of the prunable layers' channels (a layer keeps at least a tenth,
        # `round_to` rounds): the report shows it beside the requested ratio
        "channel_ratio_achieved": round(1 - channels_of(shrinkable) / max(channels_before, 1), 4),
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "params_before": int(params_before),
        "params_after": int(params_after),
    }


def _step_recording(pruner, layers: list) -> dict:
    """`pruner.step()`, group by group, recording which of its original output channels each
    of `layers` keeps: Torch-Pruning keeps the survivors in order, and a handler's indices are
    positions in the layer as it is when the group is pruned."""
    from torch_pruning._helpers import to_plain_idxs

    kept = {layer: list(range(layer.weight.shape[0])) for layer in layers}
    for group in pruner.step(interactive=True):
        removed: dict = {}
        for dep, idxs in group:
            layer = dep.target.module
            if layer in kept and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed.setdefault(layer, set()).update(to_plain_idxs(idxs))
        group.prune()
        for layer, positions in removed.items():
            kept[layer] = [c for i, c in enumerate(kept[layer]) if i not in positions]
    return kept


def _shrinkable(module, ignored: list) -> list:
    """The Conv/Linear layers whose output channels channel pruning may remove."""
    import torch

    skip = {id(m) for m in ignored}
    types = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    return [m for m in module.modules() if isinstance(m, types) and id(m) not in skip]


def iterative_pruner(
    module: torch.nn.Module,
    example: tuple,
    *,
    ratio: float,
    importance: str,
    global_scope: bool,
    ignored: list,
    round_to: int | None,
    steps: int,
    schedule,
    grad_batches=None,
    loss_fn=None,
):
    """A function `step(k)` that prunes to the k-th of `steps` ratios of `schedule(ratio,
    steps)` (cumulative), for gradual structured pruning; returns the ratio reached."""
    pruner = _pruner(
        module,
        example,
        ratio,
        importance,
        global_scope,
        ignored,
        round_to,
        steps=steps,
        schedule=schedule,
    )
    ratios = schedule(ratio, steps)

    def step(k: int) -> float:
        if importance == "taylor":
            _accumulate_gradients(module, grad_batches, loss_fn)
        pruner.step()
        module.zero_grad(set_to_none=True)
        return ratios[k]

    return step


def _pruner(
    module,
    example,
    ratio,
    importance,
    global_scope,
    ignored,
    round_to,
    *,
    steps: int = 1,
    schedule=None,
):
    import torch_pruning as tp

    scorers = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": tp.importance.TaylorImportance,
        "bn_scale": tp.importance.BNScaleImportance,
    }
    name, _, folded = importance.partition("+")  # "l1+bn": ranked on BN-folded weights
    scorer = scorers[name]()
    if folded:
        scorer = FoldedImportance(scorer, conv_bn_pairs(module, example))
    per_layer: dict = {}
    if global_scope and steps == 1:
        # one ranking across layers, then each layer on its own: monotone in `ratio`
        # (channel_allocation.py says why Torch-Pruning's global threshold is not)
        groups = _groups(module, example, scorer, ignored)
        counts = allocate(groups, ratio, round_to)
        per_layer = ratio_dict(counts, {root: len(imp) for root, imp in groups})
        ratio, global_scope, round_to = 0.0, False, None
    try:
        return tp.pruner.MetaPruner(
            module,
            example,
            importance=scorer,
            pruning_ratio=ratio,
            pruning_ratio_dict=per_layer or None,
            global_pruning=global_scope,
            max_pruning_ratio=MAX_LAYER_RATIO,
            ignored_layers=ignored,
            round_to=round_to,
            iterative_steps=steps,
            **({"iterative_pruning_ratio_scheduler": schedule} if schedule else {}),
        )
    except Exception as exc:
        raise _graph_error(exc) from None


def _groups(module, example, scorer, ignored):
    try:
        return importance_groups(module, example, scorer, ignored)
    except Exception as exc:
        raise _graph_error(exc) from None


def _graph_error(exc: Exception) -> StageError:
    return StageError(
        f"prune: the dependency graph cannot handle this model "
        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); exclude the "
        "module it names with `exclude:`"
    )


def _accumulate_gradients(module, grad_batches, loss_fn) -> None:
    """First-order Taylor importance needs gradients of the task loss on a few batches."""
    if not grad_batches:
        raise StageError(
            "prune: importance 'taylor' needs labelled training batches; give "
            "`data.train` with labels, or use importance l1/l2/bn_scale"
        )
    module.zero_grad(set_to_none=True)
    module.train()
    for inputs, labels in grad_batches:
        loss_fn(module(*inputs), labels).backward()
    module.eval()


def _ratio_for_macs(
    module, example, target, importance, global_scope, ignored, round_to, grad_batches, loss_fn
) -> float:
    """Bisect the channel ratio whose pruned copy keeps at most `target` of the MACs."""
    import copy

    import torch_pruning as tp

    base_macs, _ = tp.utils.count_ops_and_params(module, example)
    low, high = 0.0, MAX_LAYER_RATIO
    for _ in range(8):
        mid = (low + high) / 2
        trial = copy.deepcopy(module)
        ids = {id(m): n for n, m in module.named_modules()}
        by_name = dict(trial.named_modules())
        trial_ignored = [by_name[ids[id(m)]] for m in ignored]
        if importance == "taylor":
            _accumulate_gradients(trial, grad_batches, loss_fn)
        pruner = _pruner(trial, example, mid, importance, global_scope, trial_ignored, round_to)
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(trial, example)
        if macs / base_macs > target:
            low = mid
        else:
            high = mid
    return high


def prune_channels_of_model(
    model: ModelState,
    options: PruneOptions,
    ctx: StageContext,
    distill=None,
    kept_rows: dict | None = None,
) -> dict:
    """`method: channel` of the prune stage on `model.module` (in place, one-shot or gradual;
    gradual trains against the teacher of `distill` when given); returns the report
    details. `kept_rows` (one-shot): as `prune_channels`'."""
    from mcomp.compressors.prune.options import select_prunable
    from mcomp.compressors.select import layer_candidates
    from mcomp.model.convert import example_inputs
    from mcomp.training.loop import task_loss

    module = model.module
    chosen = {id(m) for _, m in select_prunable(module, options)}
    prunable = [m for _, m in layer_candidates(module, list(options.layer_types))]
    # Keep the output layer: removing its neurons would change the model's outputs.
    ignored = [m for m in prunable if id(m) not in chosen] + prunable[-1:]
    folds = options.fold_batchnorm in (True, "auto") and options.importance in ("l1", "l2")
    common = dict(
        importance=options.importance + ("+bn" if folds else ""),
        global_scope=options.scope == "global",
        ignored=ignored,
        round_to=options.round_to,
        loss_fn=task_loss(ctx.task, model.output),
        grad_batches=_taylor_batches(model, ctx) if options.importance == "taylor" else None,
    )
    example = example_inputs(model, batch=1)
    if options.gradual is not None:
        return _prune_channels_gradually(model, ctx, example, options, common, distill)
    return prune_channels(
        module,
        example,
        ratio=options.sparsity,
        target_macs_ratio=options.target_macs_ratio,
        kept_rows=kept_rows,
        **common,
    )


def _prune_channels_gradually(
    model: ModelState, ctx: StageContext, example, options: PruneOptions, common: dict, distill
) -> dict:
    import torch_pruning as tp

    from mcomp.compressors.prune.gradual import agp_sparsity, prune_channels_gradually

    gradual = options.gradual
    macs_before, params_before = tp.utils.count_ops_and_params(model.module, example)

    def schedule(ratio: float, steps: int) -> list[float]:
        return [agp_sparsity(ratio, gradual.initial_sparsity, k, steps) for k in range(steps + 1)]

    step = iterative_pruner(
        model.module,
        example,
        ratio=options.sparsity,
        steps=gradual.steps,
        schedule=schedule,
        **common,
    )
    details = prune_channels_gradually(
        model, ctx, prune_step=step, options=gradual, distill=distill
    )
    macs_after, params_after = tp.utils.count_ops_and_params(model.module, example)
    return {
        **details,
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "params_before": int(params_before),
        "params_after": int(params_after),
    }


def _taylor_batches(model: ModelState, ctx: StageContext, count: int = 4) -> list:
    """A few labelled training batches for Taylor importance."""
    import torch

    split = ctx.datasets.train
    if split is None or split.labels is None:
        return []
    batches = []
    for inputs, labels in split.batches(ctx.batch_size):
        tensors = tuple(torch.from_numpy(inputs[spec.name]) for spec in model.inputs)
        batches.append((tensors, torch.from_numpy(labels)))
        if len(batches) == count:
            break
    return batches
