"""The training loss of distillation: the teacher run on each batch, one term per distilled
output, the task loss on labels when there are any, and FitNets hints.

    loss = alpha * sum_i w_i * L_i(student_i, teacher_i) + (1 - alpha) * task_loss
         + sum_j v_j * mse(proj_j(student feature_j), teacher feature_j)

without labels the task term (and alpha) drop out: loss = sum_i w_i * L_i + hints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcomp.errors import StageError
from mcomp.model.outputs import output_tensors
from mcomp.training.distill_losses import term_loss

if TYPE_CHECKING:
    import torch

    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import Task
    from mcomp.training.distill_losses import Term
    from mcomp.training.distillation import DistillSettings, HintSpec


class DistillLoss:
    """The `loss_fn` for `train_module`: runs the teacher and adds the output and hint terms.

    Use as a context manager: forward hooks on hint layers are removed on exit.
    """

    def __init__(
        self,
        state: ModelState,
        teacher: torch.nn.Module,
        settings: DistillSettings,
        terms: list[Term],
        task: Task,
    ) -> None:
        from mcomp.training.loop import task_loss

        self.student, self.teacher = state.module, teacher
        self.settings, self.terms = settings, terms
        self.task_loss = task_loss(task, state.output)  # on labels, when the split has them
        self._features: dict[tuple[str, int], torch.Tensor] = {}
        self._handles: list[Any] = []
        for index, hint in enumerate(settings.hints):
            self._hook(self.student, hint.student, ("student", index))
            self._hook(teacher, hint.teacher, ("teacher", index))
        self.projections = self._build_projections(state) if settings.hints else []

    def _hook(self, root: torch.nn.Module, name: str, key: tuple[str, int]) -> None:
        def keep(_module, _inputs, output) -> None:
            self._features[key] = output_tensors(output)[0]

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
            teacher_out = output_tensors(self.teacher(*batch))
        student_out = output_tensors(outputs)
        s = self.settings
        loss = sum(
            term.weight
            * term_loss(term, student_out[term.student], teacher_out[term.teacher], s.temperature)
            for term in self.terms
        )
        if labels is not None:
            loss = s.alpha * loss + (1.0 - s.alpha) * self.task_loss(outputs, labels)
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
