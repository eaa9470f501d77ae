"""Quantization-aware training: train with fake int8, then int8 through onnxruntime.

    - qat:
        epochs: 3
        lr: 0.0001
        ema: 0.01                  # EMA weight of each batch's activation min/max
        quantize: {per_channel: true, calibration: {samples: null}}   # the final step

Training uses `mcomp.compressors.qat.fakequant` (inputs of Conv/Linear fake-quantized to
per-tensor uint8 with EMA-observed ranges, weights to per-channel symmetric int8, straight-
through gradients) inside the one training loop, `mcomp.training.loop.train_module`; pruned
weights stay zero. Then the fake-quant hooks are removed, the fp32 model is exported to ONNX
and quantized by the `quantize` stage (static QDQ, symmetric weights) with the learned
activation ranges handed to onnxruntime as `TensorQuantOverrides` (rmin/rmax) — the result is
a normal int8 QDQ model; tensors without a learned range (e.g. the last output) are
calibrated as usual.

Mapping module inputs to ONNX tensors: after onnxruntime's pre-processing, each Conv/Gemm/
MatMul node whose weight initializer equals a trained module's weight (Gemm as is; MatMul
transposed) is that module, and the node's first input is the tensor the module's input
range belongs to. Matching by weight values survives renaming by the exporter and by graph
optimisation; modules with no match are listed in `details.qat.unmapped`.

`finetune: {qat: true}` trains the same way but stays in torch: it leaves the ranges in
`ctx.shared["qat_ranges"]` for a later `quantize` stage, which applies them.
Method: Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from mcomp.compressors.quantize.stage import QuantizeOptions, QuantizeStage
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions

if TYPE_CHECKING:
    from mcomp.training.loop import TrainConfig

RANGES_KEY = "qat_ranges"  # ctx.shared: {module name: {"weight": array, "range": (lo, hi)}}
CALIBRATION_BATCHES = 4
# onnxruntime gives these ops' output the quantization parameters of their input, so a range
# learned for a Linear after MaxPool → Flatten must also be set on the MaxPool's input
SAME_SCALE_OPS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"}


class QatOptions(StageOptions):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["constant", "cosine", "step"] = "constant"
    keep_best: bool = True
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

    def check(self, model: ModelState, ctx: StageContext) -> None:
        QuantizeStage(self._quantize_options()).check(model, ctx)

    def runs_on_all_ranks(self) -> bool:
        return True  # trains: every rank under DistributedDataParallel

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.compressors.finetune import sparsity_masks
        from mcomp.model.convert import torch_to_onnx
        from mcomp.training.loop import TrainConfig

        config = TrainConfig(**self.options.model_dump(include=set(TrainConfig.__annotations__)))
        facts = qat_train(
            model,
            ctx,
            config,
            masks=sparsity_masks(model, ctx),
            ema=self.options.ema,
            label=self.name,
        )
        trained = model.with_module(model.module)
        fp32 = trained.with_onnx(torch_to_onnx(trained))
        quantize = QuantizeStage(self._quantize_options())
        quantize.tensor_overrides = ctx.shared.pop(RANGES_KEY)
        result = quantize.run(fp32, ctx)
        self.details = {
            **facts,
            **quantize.details,
            "qat": {**quantize.details.pop("qat", {}), "ema": self.options.ema},
        }
        self.notes += quantize.notes
        return result

    def _quantize_options(self) -> QuantizeOptions:
        return self.options.quantize.model_copy(update={"mode": "static"})


def qat_train(
    model: ModelState,
    ctx: StageContext,
    config: TrainConfig,
    *,
    masks: dict,
    ema: float,
    label: str,
) -> dict[str, Any]:
    """Train `model.module` with fake quantization; leaves the learned input ranges (with
    the weights that identify each module in ONNX) in `ctx.shared[RANGES_KEY]`."""
    import torch

    from mcomp.compressors.qat.fakequant import add_fake_quant, observe_only, remove_fake_quant
    from mcomp.training.loop import train_module

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
    ctx.shared[RANGES_KEY] = {
        name: {"weight": modules[name].weight.detach().cpu().numpy().copy(), "range": span}
        for name, span in ranges.items()
    }
    return {
        "train_loss": result.train_loss,
        "eval_metric_fake_quant": result.eval_metric,
        "best_epoch": result.best_epoch + 1,
        "fake_quantized_modules": len(wrapped),
    }


def tensor_overrides(prepared, learned: dict[str, dict]) -> tuple[dict, dict[str, Any]]:
    """onnxruntime `TensorQuantOverrides` for the prepared ONNX model, and mapping facts."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in prepared.graph.initializer}
    overrides: dict[str, list[dict]] = {}
    mapped: dict[str, str] = {}
    for node in prepared.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in weights
        ):
            continue
        array = numpy_helper.to_array(weights[node.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0)):
            array = array.T
        for name, entry in learned.items():
            if (
                name in mapped
                or entry["weight"].shape != array.shape
                or not np.allclose(entry["weight"], array, rtol=1e-5, atol=1e-7)
            ):
                continue
            low, high = entry["range"]
            for tensor in _same_scale_chain(prepared, node.input[0]):
                overrides[tensor] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
            mapped[name] = node.input[0]
            break
    facts = {
        "mapped": mapped,
        "unmapped": sorted(set(learned) - set(mapped)),
        "ranges": {
            mapped[n]: [round(learned[n]["range"][0], 6), round(learned[n]["range"][1], 6)]
            for n in mapped
        },
    }
    return overrides, facts


def _same_scale_chain(prepared, tensor: str) -> list[str]:
    """`tensor` and the tensors upstream of it through scale-sharing ops (SAME_SCALE_OPS)."""
    producers = {out: node for node in prepared.graph.node for out in node.output}
    chain = [tensor]
    node = producers.get(tensor)
    while node is not None and node.op_type in SAME_SCALE_OPS and node.input:
        chain.append(node.input[0])
        node = producers.get(node.input[0])
    return chain
