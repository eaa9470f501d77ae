"""Quantization-aware training: train with fake int8, then int8 through onnxruntime.

    - qat:
        epochs: 3
        lr: 0.0001
        ema: 0.01                  # EMA weight of each batch's activation min/max
        quantize: {per_channel: true, calibration: {samples: null}}   # the final step

Training (`train.py`, hooks in `fakequant.py`): inputs of Conv/Linear fake-quantized to
per-tensor uint8 with EMA-observed ranges, weights to per-channel symmetric int8, straight-
through gradients, inside the one training loop, `mcomp.training.loop.train_module`; pruned
weights stay zero. Then the fake-quant hooks are removed, the fp32 model is exported to ONNX
and quantized by the quantize stage's core (`quantize_model`: static QDQ, symmetric weights)
with the learned activation ranges handed to onnxruntime as `TensorQuantOverrides`
(rmin/rmax; mapped to ONNX tensors by `mcomp.compressors.quantize.learned_ranges`) — the
result is a normal int8 QDQ model; tensors without a learned range (e.g. the last output) are
calibrated as usual.

`finetune: {qat: true}` trains the same way but stays in torch: it leaves the ranges in
`ctx.facts.qat_ranges` for a later `quantize` stage, which applies them.
Method: Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018.
"""

from __future__ import annotations

from pydantic import Field

from mcomp.compressors.quantize.options import QuantizeOptions
from mcomp.compressors.quantize.selection import check_quantize_options
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext
from mcomp.training.options import TrainingOptions


class QatOptions(TrainingOptions):
    lr: float = Field(1e-4, gt=0, description="Learning rate (low: the model is trained).")
    ema: float = Field(
        0.01,
        gt=0,
        le=1,
        description="EMA weight of each batch's activation min/max while training.",
    )
    quantize: QuantizeOptions = Field(
        default_factory=lambda: QuantizeOptions(symmetric_weights=True),
        description="Options of the final onnxruntime static quantization.",
    )


class QatStage(Stage):
    """Fake-quantized training in torch, then static int8 QDQ with the learned ranges."""

    name = "qat"
    Options = QatOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.ONNX

    def __init__(self, options: QatOptions) -> None:
        super().__init__(options)
        self._warned: set[str] = set()  # exclude patterns warned about by check()

    def check(self, model: ModelState, ctx: StageContext) -> None:
        from mcomp.training.augment import check_augment

        check_quantize_options(model.onnx_model, self._quantize_options(), ctx, self._warned)
        check_augment(self.options.augment, model, ctx, f"{self.name}.augment", teacher=False)

    def runs_on_all_ranks(self) -> bool:
        return True  # trains: every rank under DistributedDataParallel

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.compressors.qat.train import qat_train
        from mcomp.compressors.quantize.core import quantize_model
        from mcomp.model.convert import torch_to_onnx
        from mcomp.training.masks import training_masks

        facts, learned = qat_train(
            model,
            ctx,
            self.options.train_config(),
            masks=training_masks(model.module, ctx.facts.masks),
            ema=self.options.ema,
            label=self.name,
        )
        trained = model.with_module(model.module)
        fp32 = trained.with_onnx(torch_to_onnx(trained))
        result = quantize_model(
            fp32, self._quantize_options(), ctx, learned=learned, warned=self._warned
        )
        details = result.details
        self.details = {
            **facts,
            **details,
            "qat": {**details.pop("qat", {}), "ema": self.options.ema},
        }
        self.notes += result.notes
        return trained.with_onnx(result.model)

    def _quantize_options(self) -> QuantizeOptions:
        return self.options.quantize.model_copy(update={"mode": "static"})
