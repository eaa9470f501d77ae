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
RECURRENT_TYPES = ("LSTM", "GRU", "RNN")


def weight_tensors(name: str, layer: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weight matrices pruning zeroes in `layer`, keyed "<name>.<parameter>": a Conv or
    Linear's `weight`; a recurrent layer's input, hidden (and projection) matrices of every
    layer and direction (`weight_ih_l0`, `weight_hh_l0_reverse`, ...). Biases are left dense
    in both: they are few, and a zero bias is no cheaper."""
    kind = getattr(layer, "original_name", type(layer).__name__)
    if kind not in RECURRENT_TYPES:
        return [(f"{name}.weight", layer.weight)]
    return [
        (f"{name}.{key}", weight)
        for key, weight in layer.named_parameters(recurse=False)
        if key.startswith("weight_")
    ]


def training_masks(module: torch.nn.Module, recorded: dict[str, torch.Tensor]) -> dict:
    """`recorded` masks, plus the zeros already in Conv/Linear/recurrent weights (a model
    loaded pruned), keyed like `module.named_parameters()` (which may carry wrapper
    prefixes)."""
    import torch

    masks = dict(recorded)
    for name, layer in module.named_modules():
        if type(layer).__name__ not in MASKED_TYPES + RECURRENT_TYPES:
            continue
        for key, weight in weight_tensors(strip_wrapper_prefix(name), layer):
            if key not in masks and bool((weight.detach() == 0).any()):
                masks[key] = weight.detach() != 0
    by_param = {}
    for name, _ in module.named_parameters():
        stripped = strip_wrapper_prefix(name)
        if stripped in masks:
            by_param[name] = masks[stripped].to(torch.bool)
    return by_param


def mask_sparsity(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer sparsity of weight masks, keyed by layer name (a recurrent layer's
    matrices by "<layer>.<parameter>")."""
    return {
        name.removesuffix(".weight"): round(1.0 - float(mask.float().mean()), 4)
        for name, mask in masks.items()
    }
