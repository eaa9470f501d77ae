"""Distillation losses per model output: what the student matches of the teacher, and whether
that loss fits the output.

    kl      T^2 * KL(softmax(t / T) || softmax(s / T)) over the class axis (default the last);
            an output of shape (batch, steps, classes) is matched at every step (sequence
            logits, e.g. a CTC recogniser's), averaged over batch and steps
    mse     mean squared error (regression outputs, feature maps)
    cosine  1 - cosine similarity along the last axis, averaged (embeddings)
    bce     binary cross-entropy of the student's probabilities against the teacher's
            (outputs already in [0, 1]: a sigmoid's voice-activity or mask probabilities)

`resolve_terms` turns the recipe's `outputs` (or the shorthand `loss` for the chosen output)
into `Term`s and checks each against the student's and teacher's real outputs on a few train
samples, before any stage runs: a name the model does not have (did-you-mean), shapes that
differ, `kl` on an output without a class axis, `bce` on values outside [0, 1] — one line
naming the output and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mcomp.errors import DataError, StageError
from mcomp.model.outputs import flatten_outputs, resolve_output
from mcomp.recipe.schema import Task

if TYPE_CHECKING:
    import torch

LossName = Literal["kl", "mse", "cosine", "bce"]
BCE_EPS = 1e-6  # the student's probabilities are clamped into (0, 1) for the logarithm


@dataclass(frozen=True)
class Term:
    """One distilled output: where it sits in the student's and the teacher's flattened
    outputs, its loss and weight."""

    name: str
    student: int
    teacher: int
    loss: LossName
    weight: float = 1.0
    class_axis: int = -1


def default_loss(task: Task) -> LossName:
    """The loss of `loss: auto`: softened class probabilities for classification, else mse."""
    return "kl" if task == Task.CLASSIFICATION else "mse"


def term_loss(
    term: Term, student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The unweighted loss of one output."""
    import torch.nn.functional as F

    if term.loss == "kl":
        return kl_term(student, teacher, temperature, term.class_axis)
    if term.loss == "mse":
        return F.mse_loss(student, teacher)
    if term.loss == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    prob = student.clamp(BCE_EPS, 1.0 - BCE_EPS)
    return F.binary_cross_entropy(prob, teacher.clamp(0.0, 1.0))


def kl_term(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, class_axis: int = -1
) -> torch.Tensor:
    """T^2 * KL(p_t || p_s), averaged over every position that holds a class distribution."""
    import torch.nn.functional as F

    s = student.movedim(class_axis, -1).reshape(-1, student.shape[class_axis])
    t = teacher.movedim(class_axis, -1).reshape(-1, teacher.shape[class_axis])
    kl = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return kl * temperature * temperature


def resolve_terms(
    settings: Any, task: Task, chosen: int, student_out: Any, teacher_out: Any, key: str
) -> list[Term]:
    """The distilled outputs of `settings` (DistillSettings, at recipe key `key`) checked
    against one forward pass of student and teacher (`*_out`: what the modules returned on a
    few train samples); `chosen` is the student's `model.output` index."""
    s_flat, t_flat = flatten_outputs(student_out), flatten_outputs(teacher_out)
    s_names, t_names = [n for n, _ in s_flat], [n for n, _ in t_flat]
    if not settings.outputs:  # the shorthand: `loss` on the chosen output (`model.output`)
        loss = default_loss(task) if settings.loss == "auto" else settings.loss
        term = Term(s_names[chosen], chosen, min(chosen, len(t_names) - 1), loss)
        check_fit(term, s_flat[term.student][1], t_flat[term.teacher][1], f"{key}.loss")
        return [term]
    terms = []
    for index, spec in enumerate(settings.outputs):
        where = f"{key}.outputs[{index}]"
        try:
            s_index = resolve_output(spec.output, s_names, f"{where}.output")
            t_index = resolve_output(spec.output, t_names, f"{where}.output (in the teacher)")
        except DataError as exc:
            raise StageError(str(exc)) from None
        term = Term(s_names[s_index], s_index, t_index, spec.loss, spec.weight, spec.class_axis)
        check_fit(term, s_flat[s_index][1], t_flat[t_index][1], where)
        terms.append(term)
    return terms


def check_fit(term: Term, student: torch.Tensor, teacher: torch.Tensor, key: str) -> None:
    """The loss fits the output: same shapes, a class axis for kl, probabilities for bce."""
    what = f"{key}: output {term.name!r} with loss {term.loss}"
    if tuple(student.shape) != tuple(teacher.shape):
        raise StageError(
            f"{what}: the student's output has per-sample shape {tuple(student.shape[1:])}, "
            f"the teacher's {tuple(teacher.shape[1:])}; both must give the same outputs"
        )
    if not student.is_floating_point():
        raise StageError(f"{what}: the output holds {student.dtype} values; it cannot train")
    per_sample = tuple(student.shape[1:])
    if term.loss in ("kl", "cosine"):
        axis = term.class_axis if term.loss == "kl" else -1
        kind = "classes" if term.loss == "kl" else "features"
        # the batch axis (0) is no class axis
        dims = student.dim()
        if not per_sample or not -dims <= axis < dims or axis % dims == 0:
            raise StageError(
                f"{what}: the output has per-sample shape {per_sample}, no axis of {kind} "
                f"(class_axis {axis}); use mse (or bce for probabilities)"
            )
        if student.shape[axis] < 2:
            raise StageError(
                f"{what}: the output has per-sample shape {per_sample}, a single value along "
                f"the axis of {kind}; use mse (or bce for a probability)"
            )
    if term.loss == "bce":
        low, high = float(teacher.min()), float(teacher.max())
        if low < 0.0 or high > 1.0:
            raise StageError(
                f"{what}: bce compares probabilities in [0, 1], but the teacher's output "
                f"ranges over [{low:.3g}, {high:.3g}] (logits?); use kl for logits or mse"
            )
