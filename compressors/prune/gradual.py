"""Gradual pruning during training with the cubic AGP schedule (Zhu & Gupta, 2017):

    s_k = s_f + (s_i - s_f) * (1 - k / n) ** 3,   k = 0 .. n

Used by the `prune` stage when `gradual:` is set. Sparsity rises over the first
`prune_fraction` of the training steps in `steps` increments, then the model trains on at the
final sparsity; the best checkpoint is chosen only among epochs at the final sparsity.
Training runs through the one loop of mcomp (`mcomp.training.loop.train_module`), with the
shared training options (`mcomp.training.options.TrainingOptions`; 8 epochs by default).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from mcomp.model.state import ModelState
from mcomp.stage import StageContext
from mcomp.training.options import TrainingOptions

if TYPE_CHECKING:
    import torch


class GradualOptions(TrainingOptions):
    """AGP schedule and the training that carries it."""

    steps: int = Field(8, ge=1, le=100_000, description="Number of sparsity increments (n).")
    initial_sparsity: float = Field(
        0.0, ge=0, lt=1, description="Sparsity at the start of the schedule (s_i)."
    )
    epochs: int = Field(8, ge=1, le=100_000, description="Training epochs in all.")
    prune_fraction: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Share of training over "
        "which sparsity rises; the rest trains at final sparsity.",
    )


def agp_sparsity(final: float, initial: float, step: int, steps: int) -> float:
    """Sparsity after `step` of `steps` increments on the cubic AGP curve."""
    progress = min(max(step / steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def prune_magnitude_gradually(
    model: ModelState,
    ctx: StageContext,
    targets: list[tuple[str, torch.nn.Module]],
    *,
    final: float,
    scope: str,
    options: GradualOptions,
) -> dict:
    """Train while raising unstructured sparsity on `targets`; returns schedule details."""
    import torch

    from mcomp.training.loop import train_module

    split = ctx.datasets.train
    steps_per_epoch = math.ceil(len(split) / options.batch_size) if split is not None else 1
    total = options.epochs * steps_per_epoch
    interval = max(1, int(total * options.prune_fraction) // options.steps)
    weights = {f"{name}.weight": module.weight for name, module in targets}
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    schedule: list[float] = []

    def apply(step: int) -> None:
        target = agp_sparsity(final, options.initial_sparsity, step, options.steps)
        _set_masks(weights, masks, target, scope)
        schedule.append(round(target, 4))

    apply(0)

    def on_step(*, epoch: int, step: int) -> None:
        done = epoch * steps_per_epoch + step + 1
        if done % interval == 0 and done // interval <= options.steps:
            apply(done // interval)

    last_prune_epoch = min(options.epochs - 1, (interval * options.steps - 1) // steps_per_epoch)
    by_param = _by_parameter_name(model.module, masks)
    result = train_module(
        model,
        ctx,
        options.train_config(best_from_epoch=last_prune_epoch),
        masks=by_param,
        label="prune (gradual)",
        on_step=on_step,
    )
    return {
        "schedule": schedule,
        "train_loss": result.train_loss,
        "eval_metric": result.eval_metric,
        "best_epoch": result.best_epoch + 1,
        "masks": masks,
    }


def _set_masks(
    weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], sparsity: float, scope: str
) -> None:
    """Zero the smallest-magnitude weights so `sparsity` of them are zero; masks in place."""
    import torch

    with torch.no_grad():
        if scope == "global":
            flat = torch.cat([w.abs().flatten() for w in weights.values()])
            count = int(round(sparsity * flat.numel()))
            threshold = torch.kthvalue(flat, count).values if count > 0 else None
            for name, weight in weights.items():
                keep = (
                    weight.abs() > threshold
                    if threshold is not None
                    else torch.ones_like(masks[name])
                )
                masks[name].copy_(keep & masks[name])
                weight.mul_(masks[name])
            return
        for name, weight in weights.items():
            count = int(round(sparsity * weight.numel()))
            if count > 0:
                threshold = torch.kthvalue(weight.abs().flatten(), count).values
                masks[name].copy_((weight.abs() > threshold) & masks[name])
            weight.mul_(masks[name])


def _by_parameter_name(module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks keyed like `module.named_parameters()` (which may carry wrapper prefixes)."""
    from mcomp.model.module_names import strip_wrapper_prefix

    return {
        name: masks[strip_wrapper_prefix(name)]
        for name, _ in module.named_parameters()
        if strip_wrapper_prefix(name) in masks
    }


def prune_channels_gradually(
    model: ModelState, ctx: StageContext, *, prune_step, options: GradualOptions
) -> dict:
    """Structured pruning in `steps` increments with training between them.

    `prune_step(ratio)` removes channels up to the given cumulative ratio; the optimizer is
    rebuilt after each structural change (its state refers to the old tensor shapes).
    """
    from mcomp.training.loop import train_module

    epochs_per_step = max(1, options.epochs // (options.steps + 1))
    schedule, losses = [], []
    for step in range(1, options.steps + 1):
        ratio = prune_step(step)
        schedule.append(round(ratio, 4))
        config = options.train_config(epochs=epochs_per_step, keep_best=False)
        losses += train_module(
            model, ctx, config, masks={}, label=f"prune (gradual {step}/{options.steps})"
        ).train_loss
    final_epochs = max(1, options.epochs - epochs_per_step * options.steps)
    config = options.train_config(epochs=final_epochs)
    result = train_module(model, ctx, config, masks={}, label="prune (gradual, final)")
    return {
        "schedule": schedule,
        "train_loss": losses + result.train_loss,
        "eval_metric": result.eval_metric,
    }
