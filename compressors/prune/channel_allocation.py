"""Global channel pruning that is monotone in `sparsity`: one ranking of normalised channel
importance across layers decides how many channels each layer loses; each layer is then
pruned on its own to that count.

Torch-Pruning's own global mode thresholds the pooled scores and prunes each group by
`score <= threshold`; a group that would lose every channel, or whose count `round_to`
rounds down to zero, is skipped whole, so a larger `sparsity` could remove fewer channels
(on the bundled CNN 0.8 left 827 parameters and 0.9 left 5,120). Here the lowest scores are
taken one by one, skipping a layer once it reached `MAX_LAYER_RATIO` (a larger target only
adds picks: the per-layer counts, and so the parameters, never grow), and `round_to` rounds
each layer's kept channels up to a multiple, never to zero.

Importance is Torch-Pruning's group importance, normalised by its mean within each group
(`normalizer="mean"`), so layers of different scale compare; with `fold_batchnorm` a
convolution followed by BatchNorm is ranked on its folded weights (`importance.py`).
"""

from __future__ import annotations

import math
from typing import Any

MAX_LAYER_RATIO = 0.9  # global ranking may not empty a layer completely


def allocate(groups: list[tuple[Any, Any]], ratio: float, round_to: int | None) -> dict[Any, int]:
    """{root module: channels to remove} for `groups` [(root module, per-channel importance
    tensor)], removing `ratio` of all their channels, lowest importance first."""
    import torch

    sizes = [len(imp) for _, imp in groups]
    caps = [min(size - 1, math.floor(size * MAX_LAYER_RATIO)) for size in sizes]
    scores = torch.cat([imp.detach().float().cpu() for _, imp in groups])
    owner = torch.cat([torch.full((size,), i) for i, size in enumerate(sizes)])
    order = torch.argsort(scores, stable=True)
    wanted = round(ratio * sum(sizes))
    counts = [0] * len(groups)
    taken = 0
    for index in order.tolist():
        if taken >= wanted:
            break
        layer = int(owner[index])
        if counts[layer] < caps[layer]:
            counts[layer] += 1
            taken += 1
    if round_to:
        counts = [_rounded(n, k, round_to) for n, k in zip(sizes, counts, strict=True)]
    return {root: count for (root, _), count in zip(groups, counts, strict=True) if count > 0}


def _rounded(size: int, count: int, round_to: int) -> int:
    """Channels to remove so that the kept ones are a multiple of `round_to` (rounded up,
    at least `round_to`); a layer narrower than `round_to` is left alone."""
    if size <= round_to:
        return 0
    kept = max(round_to, math.ceil((size - count) / round_to) * round_to)
    return max(size - kept, 0)


def ratio_dict(counts: dict[Any, int], sizes: dict[Any, int]) -> dict[Any, float]:
    """Torch-Pruning's per-layer `pruning_ratio_dict` that removes exactly `counts`: it
    prunes `size - int(size * (1 - r))` channels, so r sits half a channel below k / size
    to stay clear of rounding."""
    return {root: (count - 0.5) / sizes[root] for root, count in counts.items()}


def importance_groups(module, example, importance, ignored: list) -> list[tuple[Any, Any]]:
    """(root module, normalised importance per channel) of every prunable group."""
    import torch
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    found = []
    roots = [torch.nn.modules.conv._ConvNd, torch.nn.Linear]
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=roots):
        imp = importance(group)
        if imp is None:
            continue
        found.append((group[0].dep.target.module, imp))
    return found


def channels_of(modules: list) -> int:
    """Output channels / features of `modules` (the layers channel pruning may shrink)."""
    total = 0
    for layer in modules:
        total += getattr(layer, "out_channels", None) or getattr(layer, "out_features", 0)
    return total
