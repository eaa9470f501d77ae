"""The training options every training stage shares (finetune, distill, gradual prune, qat).

Declared once here; a stage whose default differs (distill trains 5 epochs, qat and gradual
pruning others) re-declares only that field. `train_config` hands them to the one loop;
`augment` (`mcomp.training.augment`) is applied there to every batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from mcomp.stage import StageOptions
from mcomp.training.augment import AugmentOptions

if TYPE_CHECKING:
    from mcomp.training.loop import TrainConfig

Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "step"]
BatchNormMode = Literal["auto", "train", "frozen"]


class TrainingOptions(StageOptions):
    """How a stage trains: epochs, batches, optimizer, learning-rate schedule."""

    epochs: int = Field(3, ge=1, le=100_000, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Training batch size.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    optimizer: Optimizer = Field("adam", description="adam, adamw or sgd (torch.optim).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of `optimizer: sgd`.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw).")
    schedule: Schedule = Field(
        "constant",
        description="Learning rate over the training steps: constant, cosine (annealed to 0) "
        "or step (x0.1 after each third).",
    )
    keep_best: bool = Field(
        True,
        description="Restore the epoch with the best eval metric at the end (without "
        "labels: the least distillation loss on the eval split), the model as "
        "it came in included (evaluated once before training: a run whose every epoch "
        "scores worse leaves it unchanged, `best_epoch: 0`; a tie goes to training; not "
        "in gradual pruning, whose start is denser than its target); false: keep the last "
        "epoch.",
    )

    batchnorm: BatchNormMode = Field(
        "auto",
        description="BatchNorm statistics while training: train (batch statistics, running "
        "averages updated), frozen (the running statistics the model came with; scale and "
        "shift still train), auto: frozen when a pretrained model is distilled (distill "
        "without a new student, finetune's distillation), train otherwise (docs/recovery.md).",
    )
    augment: AugmentOptions | None = Field(
        None,
        description="Cheap per-batch input augmentation for a small train split (noise, "
        "image flips/crops, audio gain/shift, token dropout; docs/recovery.md); "
        "null: none.",
    )

    def train_config(self, **overrides) -> TrainConfig:
        """These options as the training loop's config (`overrides` win)."""
        from mcomp.training.loop import TrainConfig

        fields = {name: getattr(self, name) for name in TrainingOptions.model_fields}
        return TrainConfig(**{**fields, **overrides})
