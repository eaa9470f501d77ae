"""The one training loop of mcomp: finetune (and later gradual pruning, distillation, QAT) call
it with hooks instead of copying it.

It trains on the train split with a seeded shuffle, keeps pruned weights at zero (masks are
applied to gradients and weights at every step), evaluates after each epoch and restores the
best checkpoint.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mcomp.errors import NonFiniteError, StageError
from mcomp.model.modes import set_training
from mcomp.model.state import ModelState
from mcomp.recipe.schema import Task
from mcomp.training.augment import batch_augmenter

if TYPE_CHECKING:
    import torch

    from mcomp.stage import StageContext

Hook = Callable[..., None]


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    keep_best: bool = True
    # Epochs before this one are not candidates for the best checkpoint (gradual pruning: the
    # model is not at its final sparsity yet).
    best_from_epoch: int = 0
    # whether the model as it came in is a candidate for the best checkpoint: not for
    # gradual pruning, whose start is denser than the target
    start_is_candidate: bool = True
    # "frozen": BatchNorm layers keep their running statistics (eval mode) while the rest
    # trains; "auto" is resolved by the stage (see TrainingOptions.batchnorm), else trains
    batchnorm: str = "train"
    # choose the best checkpoint by `loss_fn` on the eval split (lower is better) instead of
    # the eval metric: set for distillation without labels, where the metric (agreement with
    # the original on a small split) is coarse and the loss is the objective itself
    checkpoint_by_loss: bool = False
    # per-batch input transforms (`mcomp.training.augment.AugmentOptions`), applied before the
    # batch reaches the model and the loss (a teacher in the loss sees the same input)
    augment: Any = None


@dataclass
class TrainResult:
    train_loss: list[float] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)
    # -1: every epoch scored worse than the model as it came in (`start_metric`), kept
    best_epoch: int = -1
    start_metric: float | None = None
    eval_loss: list[float] = field(default_factory=list)  # with `checkpoint_by_loss`
    start_loss: float | None = None


def train_module(
    state: ModelState,
    ctx: StageContext,
    config: TrainConfig,
    *,
    masks: dict[str, torch.Tensor],
    label: str = "finetune",
    loss_fn: Callable[..., torch.Tensor] | None = None,
    on_step: Hook | None = None,
    extra_parameters: list[torch.Tensor] | None = None,
) -> TrainResult:
    """Train `state.module` in place; returns per-epoch loss and eval metric.

    `extra_parameters` are trained beside the module's own but are not part of it (e.g. the
    projections of distillation hints); they are not saved in the best checkpoint.
    """
    import torch

    split = ctx.datasets.train
    if split is None:
        raise StageError(f"{label}: needs `data.train`; the recipe names no train split")
    if split.labels is None and loss_fn is None:
        raise StageError(
            f"{label}: the train split has no labels; add them (`labels: y`) or "
            "train against a teacher with distillation"
        )
    if ctx.device_note:
        ctx.progress.log(ctx.device_note)
        ctx.device_note = None  # once per run
    module = state.module.to(ctx.device)
    params = dict(module.named_parameters())
    for mask in masks.values():
        # moved in place (not copied): callers such as gradual pruning update the same tensors
        mask.data = mask.data.to(ctx.device)
    masked = [(params[name], mask) for name, mask in masks.items() if name in params]
    runner = _distributed(module, ctx)
    optimizer = _optimizer(module, config, extra_parameters or [])
    samples = len(split) if ctx.dist is None else -(-len(split) // ctx.dist.world_size)
    steps_per_epoch = math.ceil(samples / config.batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    loss_fn = loss_fn or task_loss(ctx.task, state.output)
    inputs = [torch.from_numpy(split.inputs[spec.name]) for spec in state.inputs]
    labels = torch.from_numpy(np.asarray(split.labels)) if split.labels is not None else None
    generator = torch.Generator().manual_seed(ctx.seed)
    augment = batch_augmenter(config.augment, state, ctx)
    result, best, best_value = TrainResult(), None, None
    # the eval loss needs the whole eval split in this process
    by_loss = config.checkpoint_by_loss and ctx.dist is None and ctx.datasets.eval is not None
    higher = False if by_loss else ctx.metric.higher_is_better
    if config.keep_best and config.start_is_candidate and config.best_from_epoch == 0:
        # the model as it came in is a candidate too: on a few hundred unlabelled inputs a
        # recovery run can end worse than it started, and then the start is what to keep
        set_training(module, False)
        best_value = result.start_metric = _evaluate(state, ctx)
        if by_loss:
            best_value = result.start_loss = _eval_loss(state, ctx, loss_fn, config.batch_size)
        best = copy.deepcopy(module.state_dict())
    ctx.progress.start(label, total=config.epochs * steps_per_epoch)
    for epoch in range(config.epochs):
        set_training(module, True)
        if config.batchnorm == "frozen":
            freeze_batchnorm(module)
        # the same permutation on every rank (same generator), then this rank's shard of it
        order = torch.randperm(len(split), generator=generator)
        if ctx.dist is not None:
            order = ctx.dist.shard(order, len(split))
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = [t[index] for t in inputs]
            if augment is not None:
                batch = augment(batch)
            batch = [t.to(ctx.device) for t in batch]
            optimizer.zero_grad(set_to_none=True)
            outputs = runner(*batch)
            target = None if labels is None else labels[index].to(ctx.device)
            loss = loss_fn(outputs, target, batch)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise NonFiniteError(
                    f"{label}: the training loss became {loss_value} in epoch {epoch + 1}, step "
                    f"{start // config.batch_size + 1}: training diverged; lower `lr` (now "
                    f"{config.lr:g})"
                )
            loss.backward()
            for param, mask in masked:
                if param.grad is not None:
                    param.grad.mul_(mask)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for param, mask in masked:
                    param.mul_(mask)
            if on_step is not None:
                on_step(epoch=epoch, step=start // config.batch_size)
            total += loss_value * len(index)
            count += len(index)
            ctx.progress.advance()
        set_training(module, False)
        total, count = _reduce_loss(total, count, ctx)
        try:
            value = _evaluate(state, ctx)
        except NonFiniteError as exc:
            raise NonFiniteError(
                f"{label}: after epoch {epoch + 1} {exc}: training diverged; lower `lr` (now "
                f"{config.lr:g})"
            ) from None
        result.train_loss.append(round(total / count, 6))
        result.eval_metric.append(value)
        shown = ""
        if by_loss:
            loss_now = _eval_loss(state, ctx, loss_fn, config.batch_size)
            result.eval_loss.append(round(loss_now, 6))
            value, shown = loss_now, f", eval loss {loss_now:.4f}"
        ctx.progress.log(
            f"{label} epoch {epoch + 1}/{config.epochs}: train loss "
            f"{total / count:.4f}, eval {ctx.metric.name} {result.eval_metric[-1]:.4f}{shown}"
        )
        eligible = epoch >= config.best_from_epoch
        # against the model as it came in a tie goes to training: a coarse metric (top-1
        # agreement on a small eval split) often does not move while the loss falls
        from_start = result.best_epoch < 0 and result.start_metric is not None
        if eligible and (
            best_value is None
            or _better(value, best_value, higher)
            or (from_start and value == best_value)
        ):
            best_value, result.best_epoch = value, epoch
            best = copy.deepcopy(module.state_dict()) if config.keep_best else None
    ctx.progress.finish()
    if config.keep_best and best is not None:
        if result.best_epoch < 0:
            start = (
                f"eval loss {result.start_loss:.4f}"
                if by_loss
                else f"eval {ctx.metric.name} {result.start_metric:.4f}"
            )
            ctx.progress.log(
                f"{label}: every epoch scored worse than the model as it came in ({start}); "
                "it is kept unchanged"
            )
        module.load_state_dict(best)
    set_training(module.to("cpu"), False)  # measurement, quantization, export: on the CPU
    return result


def training_facts(result: TrainResult, metric_key: str = "eval_metric") -> dict:
    """What a training stage reports of `train_module`'s run: per-epoch loss and eval metric,
    the kept epoch (1-based; 0: all scored worse than the model as it came in, kept) and that
    starting model's eval metric; with `checkpoint_by_loss` the eval losses that chose it."""
    facts = {
        "train_loss": result.train_loss,
        metric_key: result.eval_metric,
        "best_epoch": result.best_epoch + 1,
    }
    if result.start_metric is not None:
        facts["start_eval_metric"] = result.start_metric
    if result.eval_loss:  # the checkpoint was chosen by the loss on the eval split
        facts["checkpoint_by"] = "eval_loss"
        facts["eval_loss"] = result.eval_loss
        if result.start_loss is not None:
            facts["start_eval_loss"] = round(result.start_loss, 6)
    return facts


def freeze_batchnorm(module) -> None:
    """BatchNorm layers in eval mode: normalised by the running statistics, which stay as
    they are. Distilling a pretrained model on a few hundred unlabelled inputs otherwise
    re-estimates them from small batches of other data, which the rest of the network was
    not trained for (the easyocr recogniser: CTC decode agreement fell from 0.72 to 0.65
    after distillation in train mode, rose to 0.76 with frozen statistics)."""
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.eval()


def _distributed(module, ctx):
    """The module wrapped in DistributedDataParallel under torchrun, else the module itself.
    Stages keep working on `module`: the wrapper only syncs gradients."""
    if ctx.dist is None:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.dist.local_rank] if ctx.device == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def _reduce_loss(total: float, count: int, ctx) -> tuple[float, int]:
    if ctx.dist is None:
        return total, count
    parts = ctx.dist.all_gather((total, count))
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _eval_loss(state: ModelState, ctx, loss_fn, batch_size: int) -> float:
    """The mean training loss over the eval split (no labels: a distillation loss), in eval
    mode without gradients."""
    import torch

    split = ctx.datasets.eval
    inputs = [torch.from_numpy(split.inputs[spec.name]) for spec in state.inputs]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            batch = [t[start : start + batch_size].to(ctx.device) for t in inputs]
            loss = loss_fn(state.module(*batch), None, batch)
            total += float(loss) * len(batch[0])
            count += len(batch[0])
    return total / max(count, 1)


def _evaluate(state: ModelState, ctx) -> float:
    if ctx.dist is None:
        return ctx.evaluate(state)
    from mcomp.run.distributed import evaluate_sharded

    return evaluate_sharded(state, ctx)


def _better(value: float, best: float, higher: bool) -> bool:
    return value > best if higher else value < best


def task_loss(task: Task, output: int = 0) -> Callable[..., Any]:
    """The loss on labels of the model's chosen output (`ModelState.output`): cross-entropy
    for classification, else mean squared error. Called as `loss(outputs, labels, batch)`."""
    import torch.nn.functional as F

    from mcomp.model.outputs import pick

    def loss(outputs, labels, _batch=None):
        chosen = pick(outputs, output)
        if task == Task.CLASSIFICATION:
            return F.cross_entropy(chosen, labels.long())
        return F.mse_loss(chosen, labels.to(chosen.dtype).view_as(chosen))

    return loss


def _optimizer(module, config: TrainConfig, extra_parameters: list):
    import torch

    params = [p for p in module.parameters() if p.requires_grad] + list(extra_parameters)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    import torch

    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, total // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
