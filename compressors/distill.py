"""Knowledge distillation: train a student against a teacher's outputs, labels optional.

    - distill:
        teacher: null            # default: the original model (before any stage ran)
        student:                 # default: the current model
          factory: mcomp.models.digits_cnn:digits_cnn
          factory_args: {width: 8}
          init_from_teacher: true  # copy teacher weights where names and shapes match
        temperature: 4.0
        alpha: 0.9               # alpha * distillation + (1 - alpha) * task loss (with labels)
        loss: auto               # on model.output: kl (classification) | mse | cosine | bce
        outputs: [{output: logits, loss: kl, weight: 1.0}]   # or several, weighted
        hints: [{student: "2", teacher: "2", weight: 1.0}]   # FitNets feature hints
        epochs: 5
        lr: 0.001

The loss and hint machinery live in `mcomp.training.distillation` (shared with
`finetune: {distill:}`);
training is the one loop, `mcomp.training.loop.train_module`. When the student is the current
model, weights zeroed by an earlier prune stay zero; a new student architecture starts without
masks. The best eval checkpoint is kept.
Method: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; hints: Romero et
al., "FitNets", ICLR 2015.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mcomp.errors import StageError
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions
from mcomp.training.distillation import DistillSettings
from mcomp.training.options import TrainingOptions


class StudentSpec(StageOptions):
    """A new (usually smaller) student architecture built by a factory."""

    factory: str = Field(description="'package.module:function' returning an untrained module.")
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to `factory`."
    )
    init_from_teacher: bool = Field(
        False, description="Copy teacher weights whose names and shapes match."
    )


class DistillOptions(DistillSettings, TrainingOptions):
    # matching soft targets takes more steps than fitting labels (benchmarks/RESULTS.md)
    epochs: int = Field(5, ge=1, le=100_000, description="Passes over the train split.")
    student: StudentSpec | None = Field(
        None,
        description="A new student architecture from a factory; default: the current model "
        "(pruned zeros stay zero).",
    )


class DistillStage(Stage):
    """Distill the teacher (default: the original model) into the current or a new model."""

    name = "distill"
    Options = DistillOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def check(self, model: ModelState, ctx: StageContext) -> None:
        from mcomp.training.augment import check_augment
        from mcomp.training.distillation import check_distill, check_hints, load_teacher

        teacher = load_teacher(self.options, ctx, self.name)
        student = self._build_student() if self.options.student else model.module
        check_hints(student, teacher, self.options.hints, self.name)
        check_distill(student, teacher, model, self.options, ctx, self.name)
        check_augment(self.options.augment, model, ctx, f"{self.name}.augment", teacher=True)

    def runs_on_all_ranks(self) -> bool:
        return True  # trains: every rank under DistributedDataParallel

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.training.distillation import distill_train, load_teacher
        from mcomp.training.masks import training_masks

        opts = self.options
        copied: dict[str, Any] = {}
        if opts.student is not None:
            student = self._build_student()
            if opts.student.init_from_teacher:
                copied = copy_matching(load_teacher(opts, ctx, self.name), student)
            model = model.with_module(student)
            ctx.facts.masks = {}  # pruning masks belong to the old architecture
            self.notes.append(f"new student from {opts.student.factory}")
        masks = training_masks(model.module, ctx.facts.masks)
        self.notes += ctx.datasets.train_notes()
        self.details = distill_train(
            model,
            ctx,
            opts.train_config(batchnorm=self._batchnorm()),
            opts,
            masks=masks,
            label=self.name,
        )
        if opts.student is not None:
            self.details["student"] = {
                "factory": opts.student.factory,
                "factory_args": opts.student.factory_args,
                "params": sum(p.numel() for p in model.module.parameters()),
                "init_from_teacher": copied or None,
            }
        return model.with_module(model.module)

    def _batchnorm(self) -> str:
        """`batchnorm: auto`: a pretrained student (the current model) keeps its BatchNorm
        statistics; a new architecture has none worth keeping."""
        if self.options.batchnorm != "auto":
            return self.options.batchnorm
        return "frozen" if self.options.student is None else "train"

    def _build_student(self):
        import torch

        from mcomp.factory import import_factory

        spec = self.options.student
        build = import_factory(spec.factory, key=f"{self.name}.student.factory")
        try:
            module = build(**spec.factory_args)
        except Exception as exc:
            raise StageError(
                f"{self.name}.student: {spec.factory}(**{spec.factory_args}) "
                f"failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(module, torch.nn.Module):
            raise StageError(
                f"{self.name}.student: {spec.factory} returned "
                f"{type(module).__name__}, not a torch.nn.Module"
            )
        return module


def copy_matching(teacher, student) -> dict[str, list[str]]:
    """Copy teacher tensors into the student where names and shapes match; say what was done."""
    import torch

    source = teacher.state_dict()
    target = student.state_dict()
    copied = [k for k, v in target.items() if k in source and source[k].shape == v.shape]
    mismatched = [k for k, v in target.items() if k in source and source[k].shape != v.shape]
    with torch.no_grad():
        student.load_state_dict({**target, **{k: source[k].clone() for k in copied}})
    return {
        "copied": copied,
        "shape_mismatch": mismatched,
        "missing_in_teacher": [k for k in target if k not in source],
    }
