"""Training with fake int8 (quantization-aware training), shared by the `qat` stage and
`finetune: {qat: true}`.

Inputs of Conv/Linear are fake-quantized to per-tensor uint8 with EMA-observed ranges, weights
to per-channel symmetric int8, with straight-through gradients (`fakequant`), inside the one
training loop, `mcomp.training.loop.train_module`; pruned weights stay zero. The result is
the trained fp32 module and the learned input range of each module, with its weight (which
identifies the module's node in the ONNX graph later).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcomp.model.state import ModelState
from mcomp.stage import QatRange, StageContext

if TYPE_CHECKING:
    from mcomp.training.loop import TrainConfig

CALIBRATION_BATCHES = 4


def qat_train(
    model: ModelState,
    ctx: StageContext,
    config: TrainConfig,
    *,
    masks: dict,
    ema: float,
    label: str,
) -> tuple[dict[str, Any], dict[str, QatRange]]:
    """Train `model.module` with fake quantization; returns the report facts and the learned
    input range of each fake-quantized module (with the weight that identifies it in ONNX)."""
    import torch

    from mcomp.compressors.qat.fakequant import add_fake_quant, observe_only, remove_fake_quant
    from mcomp.training.loop import train_module, training_facts

    module = model.module
    wrapped = add_fake_quant(module, ema)
    split = ctx.datasets.calibration or ctx.datasets.train
    batches = [
        [torch.from_numpy(inputs[spec.name]) for spec in model.inputs]
        for inputs, _ in list(split.batches(config.batch_size))[:CALIBRATION_BATCHES]
    ]
    observe_only(module, batches)
    try:
        result = train_module(model, ctx, config, masks=masks, label=label)
    finally:
        ranges = remove_fake_quant(module)
    if ctx.dist is not None:
        # each rank observed its own shard: take the union of the ranges so all ranks hand
        # onnxruntime the same overrides (the weights already agree through DDP)
        every = ctx.dist.all_gather(ranges)
        ranges = {
            name: (min(r[name][0] for r in every), max(r[name][1] for r in every))
            for name in ranges
        }
    modules = dict(module.named_modules())
    learned = {
        name: QatRange(modules[name].weight.detach().cpu().numpy().copy(), low, high)
        for name, (low, high) in ranges.items()
    }
    facts = {
        **training_facts(result, "eval_metric_fake_quant"),
        "fake_quantized_modules": len(wrapped),
    }
    return facts, learned
