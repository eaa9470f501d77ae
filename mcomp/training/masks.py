"""Sparsity masks: which weights training must keep at zero.

Magnitude pruning records its masks in `ctx.facts.masks` (names without wrapper prefixes);
every training stage asks `training_masks` for the masks keyed like the module's
`named_parameters()`, so pruned weights stay zero through finetune, distillation, QAT and
centroid training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcomp.model.module_names import strip_wrapper_prefix

if TYPE_CHECKING:
    import torch

MASKED_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")


def training_masks(module: torch.nn.Module, recorded: dict[str, torch.Tensor]) -> dict:
    """`recorded` masks, plus the zeros already in Conv/Linear weights (a model loaded
    pruned), keyed like `module.named_parameters()` (which may carry wrapper prefixes)."""
    import torch

    masks = dict(recorded)
    for name, layer in module.named_modules():
        key = f"{strip_wrapper_prefix(name)}.weight"
        if type(layer).__name__ in MASKED_TYPES and key not in masks:
            weight = layer.weight.detach()
            if bool((weight == 0).any()):
                masks[key] = weight != 0
    by_param = {}
    for name, _ in module.named_parameters():
        stripped = strip_wrapper_prefix(name)
        if stripped in masks:
            by_param[name] = masks[stripped].to(torch.bool)
    return by_param


def mask_sparsity(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer sparsity of weight masks, keyed by layer name."""
    return {
        name.removesuffix(".weight"): round(1.0 - float(mask.float().mean()), 4)
        for name, mask in masks.items()
    }
