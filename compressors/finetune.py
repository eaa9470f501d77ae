"""Fine-tuning that keeps sparsity: a real training loop on the train split.

    - finetune:
        epochs: 5
        lr: 0.001
        optimizer: adam        # adam | adamw | sgd
        schedule: cosine       # constant | cosine | step
        batch_size: 64
        distill: {temperature: 4, alpha: 0.9}   # optional: train against the original model
        # (data.train without labels: distils from the original model by default)
        qat: false             # true: fake int8 (see the qat stage); quantize uses the ranges

Weights that an earlier `prune` stage set to zero stay zero (its masks are re-applied after
every optimizer step; weights already zero in a loaded model are kept at zero too), so the
sparsity after finetune equals the sparsity before. The train loss of each epoch and the eval
metric are reported, and the best eval checkpoint is restored at the end. With `distill:` the
loss is the distillation loss of `mcomp.training.distillation` (teacher, temperature, alpha,
hints, a loss per output), the same code as the `distill` stage. A train split without labels
distils from the original model with the default settings (a log line and a report note say
so): a pruned model is recovered from its inputs alone. The training options are the shared
`TrainingOptions` (`mcomp.training.options`).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mcomp.errors import StageError
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext
from mcomp.training.distillation import DistillSettings
from mcomp.training.options import TrainingOptions

QAT_EMA = 0.01  # the qat stage's default EMA of activation ranges


class FinetuneOptions(TrainingOptions):
    distill: DistillSettings | None = Field(
        None, description="Train against a teacher (knowledge distillation) instead of labels only."
    )
    qat: bool = Field(
        False,
        description="Quantization-aware: train with fake int8 and hand "
        "the learned activation ranges to a later `quantize` stage (see the "
        "`qat` stage).",
    )

    @model_validator(mode="after")
    def _qat_without_distill(self) -> FinetuneOptions:
        if self.qat and self.distill is not None:
            raise ValueError("qat: true with distill is not supported; use one of them")
        return self


class FinetuneStage(Stage):
    """Train the current torch model on the train split, keeping zeros at zero."""

    name = "finetune"
    Options = FinetuneOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def check(self, model: ModelState, ctx: StageContext) -> None:
        from mcomp.training.augment import check_augment
        from mcomp.training.distillation import check_distill, check_hints, load_teacher

        split = ctx.datasets.train
        if split is None:
            raise StageError(
                "finetune: needs train inputs and the recipe gives none; add `data.train` "
                "(without labels it distils from the original model), or opt in to "
                "`data.train_from: [calibration]`"
            )
        if self.options.qat and split.labels is None:
            raise StageError(
                "finetune: qat: true trains on labels and data.train has none; add labels "
                "(`labels: y`), or recover with `finetune: {distill: {}}` and quantize after"
            )
        settings = self._distill_settings(ctx)
        if settings is not None:
            teacher = load_teacher(settings, ctx, self.name)
            check_hints(model.module, teacher, settings.hints, self.name)
            check_distill(model.module, teacher, model, settings, ctx, f"{self.name}.distill")
        key = f"{self.name}.augment"
        check_augment(self.options.augment, model, ctx, key, teacher=settings is not None)

    def _distill_settings(self, ctx: StageContext) -> DistillSettings | None:
        """`distill:`, else the defaults (the original model as teacher) when the train split
        has no labels: recovering a pruned model needs its inputs only."""
        if self.options.distill is not None:
            return self.options.distill
        if ctx.datasets.train is not None and ctx.datasets.train.labels is None:
            return DistillSettings()
        return None

    def runs_on_all_ranks(self) -> bool:
        return True

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.training.loop import train_module, training_facts
        from mcomp.training.masks import training_masks

        masks = training_masks(model.module, ctx.facts.masks)
        self.notes += ctx.datasets.train_notes()
        config = self.options.train_config()
        if self.options.qat:
            from mcomp.compressors.qat.train import qat_train

            self.details, ctx.facts.qat_ranges = qat_train(
                model, ctx, config, masks=masks, ema=QAT_EMA, label=self.name
            )
            return model.with_module(model.module)
        settings = self._distill_settings(ctx)
        if settings is not None:
            from mcomp.training.distillation import distill_train

            if self.options.distill is None:
                note = "data.train has no labels: distilled from the original model"
                ctx.progress.log(f"finetune: {note} (finetune.distill sets how)")
                self.notes.append(note)
            frozen = "frozen" if self.options.batchnorm == "auto" else self.options.batchnorm
            self.details = distill_train(
                model,
                ctx,
                self.options.train_config(batchnorm=frozen),
                settings,
                masks=masks,
                label=self.name,
                key=f"{self.name}.distill",
            )
            return model.with_module(model.module)
        result = train_module(model, ctx, config, masks=masks)
        self.details = {
            **training_facts(result),
            "masked_tensors": len(masks),
        }
        if self.options.augment is not None and self.options.augment.active():
            self.details["augment"] = self.options.augment.active()
        return model.with_module(model.module)
