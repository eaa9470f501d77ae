"""Gradual pruning during training with the cubic AGP schedule (Zhu & Gupta, 2017):

    s_k = s_f + (s_i - s_f) * (1 - k / n) ** 3,   k = 0 .. n

Used by the `prune` stage when `gradual:` is set. Sparsity rises over the first
`prune_fraction` of the training steps in `steps` increments, then the model trains on at the
final sparsity; the best checkpoint is chosen only among epochs at the final sparsity.
Training runs through the one loop of mcomp (`mcomp.training.loop.train_module`), with the
shared training options (`mcomp.training.options.TrainingOptions`; 8 epochs by default).

With `distill:` (or by default when the train split has no labels) the loss is distillation
from a teacher, the original model unless named (`mcomp.training.distillation.distill_train`,
the code of `finetune: {distill:}`): the sparsity schedule is the same `on_step` hook of the
same loop. This is how large sparsities of pretrained models are usually reached: the pruned
model follows the dense one's outputs while its weights go.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from mcomp.errors import StageError
from mcomp.model.state import ModelState
from mcomp.stage import StageContext
from mcomp.training.distillation import DistillSettings
from mcomp.training.masks import weight_tensors
from mcomp.training.options import TrainingOptions

if TYPE_CHECKING:
    import torch

    from mcomp.data.load import Split

KEY = "prune.gradual"
DEFAULT_DISTILL_NOTE = "data.train has no labels: distilled from the original model"


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
    distill: DistillSettings | None = Field(
        None,
        description="Train against a teacher (default: the original model) while sparsity "
        "rises; a train split without labels distils with the defaults.",
    )


def gradual_distill(options: GradualOptions, train: Split | None) -> DistillSettings | None:
    """`distill:`, else the defaults (the original model as teacher) when the train split has
    no labels, else None (training on labels)."""
    if options.distill is not None:
        return options.distill
    if train is not None and train.labels is None:
        return DistillSettings()
    return None


def check_gradual(model: ModelState, ctx: StageContext, options: GradualOptions) -> None:
    """Before any stage runs: train inputs exist, the teacher loads and fits, augment fits."""
    from mcomp.training.augment import check_augment
    from mcomp.training.distillation import check_distill, check_hints, load_teacher

    train = ctx.datasets.train
    if train is None:
        raise StageError(
            f"{KEY}: trains on inputs and the recipe gives none; add `data.train` (without "
            "labels it distils from the original model), or opt in to "
            "`data.train_from: [calibration]`"
        )
    settings = gradual_distill(options, train)
    if settings is not None:
        teacher = load_teacher(settings, ctx, f"{KEY}.distill")
        check_hints(model.module, teacher, settings.hints, f"{KEY}.distill")
        check_distill(model.module, teacher, model, settings, ctx, f"{KEY}.distill")
    check_augment(options.augment, model, ctx, f"{KEY}.augment", teacher=settings is not None)


def _train(
    model: ModelState,
    ctx: StageContext,
    config,
    *,
    masks: dict,
    label: str,
    settings: DistillSettings | None,
    teacher: torch.nn.Module | None = None,
    on_step=None,
) -> dict:
    """One training run on labels (`train_module`) or, with `settings`, against the teacher
    (`distill_train`, with `teacher` when already loaded); `on_step` is passed on. Returns
    train_loss, eval_metric, best_epoch and, distilling, the `distill` details."""
    from mcomp.training.distillation import distill_train
    from mcomp.training.loop import train_module, training_facts

    if settings is None:
        result = train_module(model, ctx, config, masks=masks, label=label, on_step=on_step)
        return training_facts(result)
    details = distill_train(
        model,
        ctx,
        config,
        settings,
        masks=masks,
        label=label,
        key=f"{KEY}.distill",
        on_step=on_step,
        teacher=teacher,
    )
    keys = ("train_loss", "eval_metric", "best_epoch", "start_eval_metric")
    training = {k: details.pop(k) for k in keys if k in details}
    details.pop("masked_tensors")
    return {**training, "distill": details}


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
    distill: DistillSettings | None = None,
) -> dict:
    """Train while raising unstructured sparsity on `targets` (against the teacher of
    `distill` when given); returns schedule details."""
    import torch

    split = ctx.datasets.train
    steps_per_epoch = math.ceil(len(split) / options.batch_size) if split is not None else 1
    total = options.epochs * steps_per_epoch
    interval = max(1, int(total * options.prune_fraction) // options.steps)
    weights = dict(tensor for name, module in targets for tensor in weight_tensors(name, module))
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
    trained = _train(
        model,
        ctx,
        options.train_config(best_from_epoch=last_prune_epoch, start_is_candidate=False),
        masks=by_param,
        label="prune (gradual)",
        settings=distill,
        on_step=on_step,
    )
    return {"schedule": schedule, **trained, "masks": masks}


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
    model: ModelState,
    ctx: StageContext,
    *,
    prune_step,
    options: GradualOptions,
    distill: DistillSettings | None = None,
) -> dict:
    """Structured pruning in `steps` increments with training between them.

    `prune_step(ratio)` removes channels up to the given cumulative ratio; the optimizer is
    rebuilt after each structural change (its state refers to the old tensor shapes), the
    teacher of `distill` is loaded once (hint projections follow the new widths).
    """
    from mcomp.training.distillation import load_teacher

    teacher = load_teacher(distill, ctx, f"{KEY}.distill") if distill is not None else None
    common = dict(masks={}, settings=distill, teacher=teacher)
    epochs_per_step = max(1, options.epochs // (options.steps + 1))
    schedule, losses = [], []
    for step in range(1, options.steps + 1):
        ratio = prune_step(step)
        schedule.append(round(ratio, 4))
        config = options.train_config(epochs=epochs_per_step, keep_best=False)
        label = f"prune (gradual {step}/{options.steps})"
        losses += _train(model, ctx, config, label=label, **common)["train_loss"]
    final_epochs = max(1, options.epochs - epochs_per_step * options.steps)
    config = options.train_config(epochs=final_epochs)
    final = _train(model, ctx, config, label="prune (gradual, final)", **common)
    final.pop("best_epoch")  # of the final run only: not comparable with the schedule
    return {"schedule": schedule, **final, "train_loss": losses + final["train_loss"]}
