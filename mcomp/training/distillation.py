"""Knowledge distillation: the loss, the teacher and hint layers, shared by the `distill` stage
and `finetune: {distill: ...}`.

    loss = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * task_loss + sum_i w_i * hint_i
    p_s = softmax(z_s / T),  p_t = softmax(z_t / T)

(Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015: the student
matches the teacher's softened distribution, i.e. cross-entropy with the teacher's soft targets,
which is KL(p_t || p_s) up to the teacher's constant entropy; T^2 keeps the gradient scale
independent of T.) Hints (Romero et al., "FitNets", ICLR 2015) add the mean squared error
between an intermediate student feature, passed through a learned linear / 1x1-conv projection
when the widths differ, and the teacher's feature at a named layer.

Training goes through the one loop of mcomp (`mcomp.training.loop.train_module`) via its
`loss_fn` hook; the projections are trained with `extra_parameters` and dropped afterwards.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mcomp.errors import MCompError, StageError
from mcomp.factory import extend_python_path
from mcomp.recipe.schema import ModelFormat, Task
from mcomp.stage import StageOptions

if TYPE_CHECKING:
    import torch

    from mcomp.model.state import ModelState
    from mcomp.stage import StageContext


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
        description="Weight of the distillation term; 1 - alpha weighs the task loss on labels.",
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

    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    if labels is None:
        return kl * t * t
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(student_logits, labels.long())


def check_task(ctx: StageContext, label: str) -> None:
    """Distillation matches class distributions: classification only."""
    if ctx.task != Task.CLASSIFICATION:
        raise StageError(
            f"{label}: distillation supports `task: classification` only (it "
            "matches softened class probabilities); for regression, train the "
            f"student with `finetune` on labels (task is {ctx.task})"
        )


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
    return state.module.eval().requires_grad_(False)


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


def check_outputs(
    student: torch.nn.Module, teacher: torch.nn.Module, state: ModelState, label: str
) -> None:
    """Teacher and student must give logits of the same shape on the same input."""
    import torch

    from mcomp.model.convert import example_inputs

    example = example_inputs(state, batch=2)
    with torch.no_grad():
        was_training = student.training
        student.eval()
        s_out, t_out = _first(student(*example)), _first(teacher(*example))
        student.train(was_training)
    if s_out.shape != t_out.shape:
        raise StageError(
            f"{label}: the student's output shape {tuple(s_out.shape)} differs "
            f"from the teacher's {tuple(t_out.shape)} (batch of 2); both must "
            "give logits over the same classes"
        )


class DistillLoss:
    """The `loss_fn` for `train_module`: runs the teacher and adds KD and hint terms.

    Use as a context manager: forward hooks on hint layers are removed on exit.
    """

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        settings: DistillSettings,
        state: ModelState,
    ) -> None:
        self.student, self.teacher, self.settings = student, teacher, settings
        self._features: dict[tuple[str, int], torch.Tensor] = {}
        self._handles: list[Any] = []
        for index, hint in enumerate(settings.hints):
            self._hook(student, hint.student, ("student", index))
            self._hook(teacher, hint.teacher, ("teacher", index))
        self.projections = self._build_projections(state) if settings.hints else []

    def _hook(self, root: torch.nn.Module, name: str, key: tuple[str, int]) -> None:
        def keep(_module, _inputs, output) -> None:
            self._features[key] = _first(output)

        self._handles.append(root.get_submodule(name).register_forward_hook(keep))

    def _build_projections(self, state: ModelState) -> list[torch.nn.Module]:
        import torch

        from mcomp.model.convert import example_inputs

        example = example_inputs(state, batch=2)
        with torch.no_grad():
            self.student(*example)
            self.teacher(*example)
        return [
            _projection(self._features[("student", i)], self._features[("teacher", i)], hint)
            for i, hint in enumerate(self.settings.hints)
        ]

    def parameters(self) -> list[torch.Tensor]:
        return [p for proj in self.projections for p in proj.parameters()]

    def __call__(self, outputs, labels, batch) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            teacher_logits = _first(self.teacher(*batch))
        s = self.settings
        loss = kd_loss(
            _first(outputs), teacher_logits, labels, temperature=s.temperature, alpha=s.alpha
        )
        for index, (hint, proj) in enumerate(zip(s.hints, self.projections, strict=True)):
            student_feature = proj(self._features[("student", index)])
            loss = loss + hint.weight * F.mse_loss(
                student_feature, self._features[("teacher", index)].detach()
            )
        return loss

    def __enter__(self) -> DistillLoss:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._features.clear()


def _projection(student_feature, teacher_feature, hint: HintSpec):
    """Identity for equal shapes, else a 1x1 conv (4-D maps) or a linear layer (2-D)."""
    import torch

    s, t = tuple(student_feature.shape), tuple(teacher_feature.shape)
    if s == t:
        return torch.nn.Identity()
    if len(s) == 4 and len(t) == 4 and s[2:] == t[2:]:
        return torch.nn.Conv2d(s[1], t[1], kernel_size=1)
    if len(s) == 2 and len(t) == 2:
        return torch.nn.Linear(s[1], t[1])
    raise StageError(
        f"hint {hint.student!r} -> {hint.teacher!r}: student feature {s[1:]} and "
        f"teacher feature {t[1:]} cannot be matched (only the channel/feature "
        "width may differ); pick layers with the same spatial size"
    )


def distill_train(
    state: ModelState,
    ctx: StageContext,
    config,
    settings: DistillSettings,
    *,
    masks: dict,
    label: str,
) -> dict[str, Any]:
    """Train `state.module` against the teacher with `train_module`; returns report details."""
    from mcomp.training.loop import train_module

    teacher = load_teacher(settings, ctx, label)
    check_hints(state.module, teacher, settings.hints, label)
    check_outputs(state.module, teacher, state, label)
    teacher.to(ctx.device)  # the batches are on the training device
    try:
        with DistillLoss(state.module, teacher, settings, state) as loss_fn:
            result = train_module(
                state,
                ctx,
                config,
                masks=masks,
                label=label,
                loss_fn=loss_fn,
                extra_parameters=loss_fn.parameters(),
            )
            projected = [type(p).__name__ for p in loss_fn.projections]
    finally:
        teacher.to("cpu")  # measurement and fidelity run on the CPU
    return {
        "train_loss": result.train_loss,
        "eval_metric": result.eval_metric,
        "best_epoch": result.best_epoch + 1,
        "masked_tensors": len(masks),
        "teacher": settings.teacher.path if settings.teacher else "original model",
        "temperature": settings.temperature,
        "alpha": settings.alpha,
        "hint_projections": projected,
    }


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs
