"""One-shot unstructured magnitude pruning (Han et al., "Learning both Weights and Connections
for Efficient Neural Networks", NeurIPS 2015).

Wraps `torch.nn.utils.prune` (L1 magnitude, over all targets at once or per layer) and makes
the result permanent with `prune.remove`, so the module carries real zeros instead of
weights plus masks (which would make the file grow). Returns the masks, for training stages
to keep the zeros at zero.
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
) -> dict[str, torch.Tensor]:
    """Zero the smallest weights of `targets` in place; {"<name>.weight": kept mask}.

    `scope: global` ranks all targets' weights together, `layer` each layer alone;
    `per_layer` (name -> sparsity, e.g. from a sensitivity analysis) overrides both."""
    from torch.nn.utils import prune

    params = [(module, "weight") for _, module in targets]
    if per_layer is not None:
        for name, module in targets:
            prune.l1_unstructured(module, "weight", amount=per_layer.get(name, sparsity))
    elif scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, attr in params:
            prune.l1_unstructured(module, attr, amount=sparsity)
    masks = {}
    for name, module in targets:
        masks[f"{name}.weight"] = module.weight_mask.detach().clone().bool()
        prune.remove(module, "weight")
    return masks
