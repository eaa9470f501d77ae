"""One-shot unstructured magnitude pruning (Han et al., "Learning both Weights and Connections
for Efficient Neural Networks", NeurIPS 2015).

Ranks the weights of the targets (all together, or per layer) and zeros the lowest, in
place: the module carries real zeros, not weights plus masks (which would make the file
grow). The rank is |w|, or with `fold_batchnorm` the BN-folded |w * gamma / sqrt(var + eps)|
of a layer followed by BatchNorm (`batchnorm.py`): raw magnitudes of a BN network are not
comparable across layers. LSTM/GRU/RNN layers (opt-in through `layer_types`) are ranked on
each weight matrix's raw |w|. As `torch.nn.utils.prune`, round(sparsity * n) weights are
zeroed. Returns the masks, for training stages to keep the zeros at zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def prune_magnitude(
    targets: list[tuple[str, torch.nn.Module]],
    *,
    sparsity: float,
    scope: str,
    per_layer: dict[str, float] | None = None,
    norms: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Zero the lowest-ranked weights of `targets` in place; {"<name>.weight": kept mask}
    (a recurrent layer: one mask per weight matrix, "<name>.weight_ih_l0" ...).

    `scope: global` ranks all targets' weights together, `layer` each layer alone;
    `per_layer` (name -> sparsity, e.g. from a sensitivity analysis) overrides both.
    `norms` ({layer: BatchNorm after it}) ranks those layers on their folded weights."""
    import torch

    from mcomp.compressors.prune.batchnorm import folded_magnitude
    from mcomp.training.masks import weight_tensors

    # one entry per weight tensor: a recurrent layer holds several (gates, directions)
    tensors = [
        (name, key, weight)
        for name, module in targets
        for key, weight in weight_tensors(name, module)
    ]
    layers = dict(targets)
    scores = [
        folded_magnitude(layers[name], (norms or {}).get(layers[name]))
        if key == f"{name}.weight"
        else weight.detach().abs()
        for name, key, weight in tensors
    ]
    if per_layer is not None:
        keep = [
            _keep(s, per_layer.get(name, sparsity))
            for (name, _, _), s in zip(tensors, scores, strict=True)
        ]
    elif scope == "global":
        flat = _keep(torch.cat([s.flatten() for s in scores]), sparsity)
        keep = list(torch.split(flat, [s.numel() for s in scores]))
        keep = [k.view_as(s) for k, s in zip(keep, scores, strict=True)]
    else:
        keep = [_keep(s, sparsity) for s in scores]
    masks = {}
    with torch.no_grad():
        for (_, key, weight), mask in zip(tensors, keep, strict=True):
            weight.mul_(mask.to(weight.dtype))
            masks[key] = mask.detach().clone()
    return masks


def _keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for all but the round(sparsity * n) lowest `scores`."""
    import torch

    count = round(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        keep[torch.topk(scores.flatten(), count, largest=False).indices] = False
    return keep.view_as(scores)
