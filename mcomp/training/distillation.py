"""Knowledge distillation: the settings, the teacher and hint layers, shared by the `distill`
stage and `finetune: {distill: ...}`.

    loss = alpha * sum_o w_o * L_o(student_o, teacher_o) + (1 - alpha) * task_loss
           + sum_i v_i * hint_i

One term per distilled output `o` (default: the chosen output with `kl` for classification,
`mse` otherwise; `cosine` for embeddings, `bce` for probabilities:
`mcomp.training.distill_losses`); without labels the task term drops out. For classification
logits the term is Hinton's:

    L = T^2 * KL(p_t || p_s),  p_s = softmax(z_s / T),  p_t = softmax(z_t / T)

(Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015: the student
matches the teacher's softened distribution, i.e. cross-entropy with the teacher's soft targets,
which is KL(p_t || p_s) up to the teacher's constant entropy; T^2 keeps the gradient scale
independent of T.) Hints (Romero et al., "FitNets", ICLR 2015) add the mean squared error
between an intermediate student feature, passed through a learned linear / 1x1-conv projection
when the widths differ, and the teacher's feature at a named layer.

Training goes through the one loop of mcomp (`mcomp.training.loop.train_module`) via its
`loss_fn` hook (`mcomp.training.teacher_loss.DistillLoss`); the projections are trained with
`extra_parameters` and dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from mcomp.errors import MCompError, StageError
from mcomp.factory import extend_python_path
from mcomp.model.modes import set_training
from mcomp.recipe.schema import ModelFormat
from mcomp.stage import StageOptions
from mcomp.training.distill_losses import LossName, kl_term

if TYPE_CHECKING:
    import torch

    from mcomp.model.state import ModelState
    from mcomp.stage import StageContext
    from mcomp.training.distill_losses import Term


class TeacherSpec(StageOptions):
    """A teacher model file, loaded like `model:` (paths relative to the recipe file)."""

    path: str = Field(description="Teacher model file, relative to the recipe file.")
    format: ModelFormat = Field(
        ModelFormat.AUTO,
        strict=False,
        description="As `model.format`; the teacher must load as a torch model (not ONNX).",
    )
    factory: str | None = Field(None, description="'package.module:function' for a state_dict.")
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to `factory`."
    )
    python_path: list[str] = Field(
        default_factory=list,
        max_length=1_000,
        description="Folders (relative to the recipe) appended to sys.path so that `factory` "
        "imports.",
    )
    allow_pickle: bool = Field(
        False, description="Load a pickled teacher module or .pt2 (executes code from the file)."
    )


class HintSpec(StageOptions):
    """One FitNets hint: match the student's output of layer `student` to the teacher's."""

    student: str = Field(description="Module name in the student, e.g. '2'.")
    teacher: str = Field(description="Module name in the teacher, e.g. '2'.")
    weight: float = Field(1.0, gt=0, description="Weight of this hint's MSE term in the loss.")


class OutputLoss(StageOptions):
    """One distilled output of the model and the loss that matches it to the teacher's."""

    output: str | int = Field(
        description="The output's key (`logits`, `last_hidden_state`) or index in the "
        "flattened outputs (docs/recovery.md#models-with-several-outputs)."
    )
    loss: LossName = Field(
        description="kl (softened class scores; over every step of sequence logits), mse, "
        "cosine (embeddings) or bce (probabilities in [0, 1])."
    )
    weight: float = Field(1.0, gt=0, description="Weight of this output's term in the loss.")
    class_axis: int = Field(
        -1,
        ge=-8,
        le=8,
        description="kl only: the axis holding the classes (-1: the last; 1 for (batch, "
        "classes, steps) or (batch, classes, height, width)).",
    )

    @field_validator("output")
    @classmethod
    def _not_a_flag(cls, value):
        if isinstance(value, bool):  # YAML `true` is not an index
            raise ValueError("must be an output's name or index")
        return value


class DistillSettings(StageOptions):
    """What to distill from and how; used by `distill` and by `finetune: {distill: ...}`."""

    teacher: TeacherSpec | None = Field(
        None, description="Default: the original model, before any stage ran."
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T.")
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Weight of the distillation term; 1 - alpha weighs the task loss on labels "
        "(without labels: the distillation term alone).",
    )
    loss: Literal["auto", "kl", "mse", "cosine", "bce"] = Field(
        "auto",
        description="The loss on the chosen output (`model.output`) when `outputs` is empty: "
        "kl, mse, cosine or bce (see `outputs`); auto: kl for classification, else mse.",
    )
    outputs: list[OutputLoss] = Field(
        default_factory=list,
        max_length=1_000,
        description="The outputs to distil, each with its loss and weight (several: their "
        "weighted sum); empty: the chosen output with `loss`.",
    )
    hints: list[HintSpec] = Field(
        default_factory=list,
        max_length=1_000,
        description="FitNets feature hints: layer pairs whose outputs are matched (through a "
        "learned projection when widths differ); empty: none.",
    )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * cross-entropy; no labels: the KD term only."""
    import torch.nn.functional as F

    kl = kl_term(student_logits, teacher_logits, temperature)
    if labels is None:
        return kl
    return alpha * kl + (1.0 - alpha) * F.cross_entropy(student_logits, labels.long())


def load_teacher(settings: DistillSettings, ctx: StageContext, label: str) -> torch.nn.Module:
    """The teacher module: the recipe's teacher file, else the original model."""
    from mcomp.model.load import load_model
    from mcomp.model.state import ModelKind
    from mcomp.recipe.schema import ModelSpec

    if settings.teacher is None:
        state = ctx.original
    else:
        spec = settings.teacher
        base = getattr(ctx, "recipe_dir", None) or Path.cwd()
        extend_python_path(base / folder for folder in spec.python_path)
        try:
            state = load_model(
                ModelSpec(
                    path=spec.path,
                    format=spec.format,
                    factory=spec.factory,
                    factory_args=spec.factory_args,
                    python_path=spec.python_path,
                    allow_pickle=spec.allow_pickle,
                ),
                base_dir=base,
            )
        except MCompError as exc:  # its message names `model.*`; say it is the teacher's
            message = str(exc).replace(
                "`model.allow_pickle: true` in the recipe or pass --allow-pickle",
                f"`{label}.teacher.allow_pickle: true` (--allow-pickle is for `model:`)",
            )
            raise StageError(f"{label}.teacher: {message}") from None
    if state.kind != ModelKind.TORCH:
        raise StageError(f"{label}: the teacher must be a torch model (got {state.kind})")
    # eval mode (BatchNorm statistics and dropout of the teacher must not move) and frozen:
    # the teacher is only ever run under no_grad, nothing may update it.
    set_training(state.module, False)
    for parameter in state.module.parameters():  # (a ScriptModule has no requires_grad_)
        parameter.requires_grad_(False)
    return state.module


def check_hints(
    student: torch.nn.Module, teacher: torch.nn.Module, hints: list[HintSpec], label: str
) -> None:
    """Every hint names a module that exists, with a did-you-mean when it does not."""
    for index, hint in enumerate(hints):
        for side, module, name in (
            ("student", student, hint.student),
            ("teacher", teacher, hint.teacher),
        ):
            names = [n for n, _ in module.named_modules() if n]
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
                hint_text = f" (did you mean {close[0]!r}?)" if close else ""
                raise StageError(
                    f"{label}: hints[{index}].{side}: no layer {name!r} in the "
                    f"{side}{hint_text}; layers are: {', '.join(names[:20])}"
                )


def check_distill(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    state: ModelState,
    settings: DistillSettings,
    ctx: StageContext,
    key: str,
) -> list[Term]:
    """The distilled outputs (`Term`s), checked on a few train samples before any stage runs:
    train inputs exist, every output named exists in both models with the same shape, and
    its loss fits it (`mcomp.training.distill_losses`)."""
    import torch

    from mcomp.training.distill_losses import resolve_terms

    sample = check_sample(ctx, key.split(".")[0], state)
    with torch.no_grad():
        was_training = student.training
        set_training(student, False)
        try:
            student_out, teacher_out = student(*sample), teacher(*sample)
        finally:
            set_training(student, was_training)
    return resolve_terms(settings, ctx.task, state.output, student_out, teacher_out, key)


def check_sample(ctx: StageContext, label: str, state: ModelState, count: int = 64) -> list:
    """The first `count` train inputs as tensors; no train split is an error that says what
    to give."""
    import torch

    split = ctx.datasets.train
    if split is None:
        raise StageError(
            f"{label}: distillation trains on inputs and the recipe gives none; add "
            "`data.train` (labels optional), or opt in to `data.train_from: [calibration]`"
        )
    return [torch.from_numpy(split.inputs[spec.name][:count]) for spec in state.inputs]


def distill_train(
    state: ModelState,
    ctx: StageContext,
    config,
    settings: DistillSettings,
    *,
    masks: dict,
    label: str,
    key: str | None = None,
    on_step=None,
    teacher: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Train `state.module` against the teacher with `train_module`; returns report details.

    `on_step` is the loop's per-step hook (gradual pruning raises sparsity there) and
    `config.best_from_epoch` its first candidate epoch for the best checkpoint. `teacher`:
    one already loaded with `load_teacher` (a caller that trains several times, such as
    gradual channel pruning, loads it once); default: loaded from `settings`.
    """
    from mcomp.training.loop import train_module, training_facts
    from mcomp.training.teacher_loss import DistillLoss

    teacher = teacher if teacher is not None else load_teacher(settings, ctx, label)
    if ctx.datasets.train.labels is None and config.keep_best:
        # no labels: the checkpoint is chosen by the distillation loss on the eval split, the
        # objective itself, rather than by the eval metric. On the easyocr recogniser the
        # metric (top-1 step agreement with the original on 128 val lines) read every
        # distilled epoch as worse than the pruned start (0.964 vs 0.971) while the loss and
        # the 256 evaluation lines' decode agreement (0.711 -> 0.727) said better
        config = dataclasses.replace(config, checkpoint_by_loss=True)
    check_hints(state.module, teacher, settings.hints, label)
    terms = check_distill(state.module, teacher, state, settings, ctx, key or label)
    teacher.to(ctx.device)  # the batches are on the training device
    try:
        with DistillLoss(state, teacher, settings, terms, ctx.task) as loss_fn:
            result = train_module(
                state,
                ctx,
                config,
                masks=masks,
                label=label,
                loss_fn=loss_fn,
                on_step=on_step,
                extra_parameters=loss_fn.parameters(),
            )
            projected = [type(p).__name__ for p in loss_fn.projections]
    finally:
        teacher.to("cpu")  # measurement and fidelity run on the CPU
    labelled = ctx.datasets.train.labels is not None
    details = {
        **training_facts(result),
        "masked_tensors": len(masks),
        "teacher": settings.teacher.path if settings.teacher else "original model",
        "outputs": [{"output": t.name, "loss": t.loss, "weight": t.weight} for t in terms],
        "temperature": settings.temperature,
        "alpha": settings.alpha if labelled else None,
        "labels": labelled,
        "hint_projections": projected,
    }
    if config.augment is not None and config.augment.active():
        details["augment"] = config.augment.active()
    return details
