"""Fake quantization for quantization-aware training, as plain torch hooks.

Each Conv/Linear module gets, for the duration of training only:

- a forward pre-hook that fake-quantizes its **input** per tensor to uint8 (asymmetric, range
  always including 0, as onnxruntime's calibrators do) with a min/max observer averaged by an
  exponential moving average (EMA) during training and frozen in eval mode;
- a forward that uses its **weight** fake-quantized per output channel to symmetric int8.

`torch.fake_quantize_per_*_affine` pass gradients straight through inside the range and
zero outside (the clipped straight-through estimator). The module's parameter names do not
change (no wrapper module), so pruning masks keyed by name still apply in the one training
loop. The observed ranges live in buffers (`qat_min`/`qat_max`) so the best checkpoint keeps
the ranges of its epoch; `remove_fake_quant` deletes hooks and buffers and returns the
ranges. No torch-quantized graph is ever exported: the model goes to ONNX in fp32 and
onnxruntime quantizes it with these ranges as overrides.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

QAT_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")
WEIGHT_QMAX = 127  # symmetric int8 weights in [-127, 127], zero point 0


def add_fake_quant(module: torch.nn.Module, momentum: float) -> list[str]:
    """Fake-quantize the inputs and weights of every Conv/Linear of `module` (in place)."""
    names = []
    for name, child in module.named_modules():
        if type(child).__name__ not in QAT_TYPES:
            continue
        import torch

        child.register_buffer("qat_min", torch.tensor(float("nan")))
        child.register_buffer("qat_max", torch.tensor(float("nan")))
        child._qat_momentum = momentum
        child._qat_hook = child.register_forward_pre_hook(_quantize_input)
        child.forward = types.MethodType(_forward_with_quantized_weight, child)
        names.append(name)
    return names


def remove_fake_quant(module: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """Remove what `add_fake_quant` added; returns {module name: (input min, input max)}."""
    ranges = {}
    for name, child in module.named_modules():
        if not hasattr(child, "_qat_hook"):
            continue
        low, high = float(child.qat_min), float(child.qat_max)
        if low == low and high == high:  # NaN: the module never ran
            ranges[name] = (min(low, 0.0), max(high, 0.0))
        child._qat_hook.remove()
        for attr in ("_qat_hook", "_qat_momentum", "forward"):
            delattr(child, attr)
        del child._buffers["qat_min"], child._buffers["qat_max"]
    return ranges


def observe_only(module: torch.nn.Module, batches) -> None:
    """Initialise the observers from data (min/max averaged over batches) before training,
    so training starts from the ranges post-training quantization would use."""
    import torch

    children = [c for c in module.modules() if hasattr(c, "_qat_hook")]
    for child in children:
        child._qat_observe_only = True
    module.train()
    with torch.no_grad():
        for count, batch in enumerate(batches, start=1):
            for child in children:
                child._qat_count = count
            module(*batch)
    for child in children:
        del child._qat_observe_only
        child.__dict__.pop("_qat_count", None)


def _quantize_input(child, args):
    import torch

    x = args[0]
    if child.training:
        with torch.no_grad():
            low, high = x.detach().min().float(), x.detach().max().float()
            if torch.isnan(child.qat_min):
                child.qat_min.copy_(low)
                child.qat_max.copy_(high)
            else:
                # observe_only: running mean over the batches; training: EMA
                weight = (
                    1.0 / child._qat_count if hasattr(child, "_qat_count") else child._qat_momentum
                )
                child.qat_min.lerp_(low, weight)
                child.qat_max.lerp_(high, weight)
    if getattr(child, "_qat_observe_only", False) or torch.isnan(child.qat_min):
        return None
    low = torch.clamp(child.qat_min, max=0.0)
    high = torch.clamp(child.qat_max, min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=1e-8)
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
    quantized = torch.fake_quantize_per_tensor_affine(
        x, scale.reshape(1).to(x.dtype), zero_point.reshape(1), 0, 255
    )
    return (quantized, *args[1:])


def fake_quant_weight(weight):
    """Per-output-channel symmetric int8 fake quantization of a Conv/Linear weight."""
    import torch

    flat = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)
    scale = torch.clamp(flat / WEIGHT_QMAX, min=1e-8).to(weight.dtype)
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(
        weight, scale, zero_point, 0, -WEIGHT_QMAX, WEIGHT_QMAX
    )


def _forward_with_quantized_weight(self, x):
    import torch.nn.functional as F

    weight = fake_quant_weight(self.weight)
    if getattr(self, "_qat_observe_only", False):
        weight = self.weight
    if type(self).__name__ == "Linear":
        return F.linear(x, weight, self.bias)
    return self._conv_forward(x, weight, self.bias)
