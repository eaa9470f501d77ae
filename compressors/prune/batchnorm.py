"""What a convolution followed by BatchNorm really computes, for ranking its weights.

In eval mode BatchNorm scales output channel c of the layer before it by
s_c = |gamma_c| / sqrt(var_c + eps), and each BatchNorm has its own scale: raw weight
magnitudes of a BN network are not comparable across layers (nor across the channels of
one layer). Ranking |w * s_c| — the weight of the BN-folded layer — ranks what the network
computes (`prune.fold_batchnorm`: on for channel pruning by default).

The pairs are found by running the model once with forward hooks: a BatchNorm whose input is
the very tensor a Conv/Linear layer returned follows that layer, whatever the module nesting
or the `forward` code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def conv_bn_pairs(module: torch.nn.Module, example: tuple) -> dict:
    """{Conv/Linear layer: the BatchNorm that reads its output directly}."""
    import torch

    from mcomp.model.modes import is_exported, is_scripted, set_training

    if is_scripted(module) or is_exported(module):
        return {}  # no forward hooks there (TorchScript) or no layer modules (torch.export)
    layers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    produced: dict[int, torch.nn.Module] = {}
    pairs: dict = {}

    def record(layer, _inputs, output) -> None:
        produced[id(output)] = layer

    def match(norm, inputs, _output) -> None:
        layer = produced.get(id(inputs[0]))
        if layer is not None and norm.track_running_stats:
            pairs[layer] = norm

    handles = []
    for sub in module.modules():
        if isinstance(sub, layers):
            handles.append(sub.register_forward_hook(record))
        elif isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            handles.append(sub.register_forward_hook(match))
    was_training = module.training
    set_training(module, False)
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for handle in handles:
            handle.remove()
        set_training(module, was_training)
    return pairs


def fold_scale(norm) -> torch.Tensor:
    """Per-channel factor |gamma| / sqrt(running_var + eps) of a BatchNorm in eval mode."""
    import torch

    scale = torch.rsqrt(norm.running_var.detach().float() + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.detach().float().abs()
    return scale


def folded_magnitude(layer, norm) -> torch.Tensor:
    """|w| of `layer` with each output channel scaled as its BatchNorm scales it."""
    weight = layer.weight.detach().abs()
    if norm is None:
        return weight
    scale = fold_scale(norm).to(weight.dtype)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1)))


class FoldedImportance:
    """A Torch-Pruning importance whose convolutions are seen BN-folded: while a group is
    scored, each layer of it that feeds a BatchNorm holds its folded weights (restored
    exactly afterwards), so its output-channel term is ||w_c * s_c||."""

    def __init__(self, inner, pairs: dict) -> None:
        self.inner, self.pairs = inner, pairs

    def __call__(self, group):
        import torch

        saved = {}
        with torch.no_grad():
            for dep, _ in group:
                layer = dep.layer
                norm = self.pairs.get(layer)
                if norm is None or layer in saved:
                    continue
                saved[layer] = layer.weight.data.clone()
                scale = fold_scale(norm).to(layer.weight.dtype)
                layer.weight.data.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
            try:
                return self.inner(group)
            finally:
                for layer, weight in saved.items():
                    layer.weight.data.copy_(weight)
