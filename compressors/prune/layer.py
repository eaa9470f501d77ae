"""Layer pruning: drop whole shape-preserving blocks (e.g. residual blocks), replacing each
with an identity, chosen by name or by the least loss of the eval metric.

Used by the `prune` stage with `method: layer`.
"""

from __future__ import annotations

import copy
import difflib
from typing import TYPE_CHECKING

from mcomp.errors import StageError
from mcomp.model.module_names import strip_wrapper_prefix

if TYPE_CHECKING:
    import torch

    from mcomp.model.state import ModelState
    from mcomp.stage import StageContext


def droppable_blocks(module: torch.nn.Module, example: tuple) -> list[str]:
    """Names of container modules with parameters whose output has their input's shape."""
    import torch

    shapes: dict[str, bool] = {}
    hooks = []
    for name, child in module.named_modules():
        if not name or not list(child.children()) or not any(True for _ in child.parameters()):
            continue

        def record(mod, inputs, output, name=name):
            first = inputs[0] if inputs else None
            shapes[name] = (
                isinstance(first, torch.Tensor)
                and isinstance(output, torch.Tensor)
                and first.shape == output.shape
            )

        hooks.append(child.register_forward_hook(record))
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for hook in hooks:
            hook.remove()
    return [strip_wrapper_prefix(name) for name, same in shapes.items() if same]


def drop_blocks(module: torch.nn.Module, names: list[str]) -> None:
    """Replace each named block with `nn.Identity()` in place."""
    import torch

    by_name = {strip_wrapper_prefix(n): n for n, _ in module.named_modules()}
    for name in names:
        parent_name, _, child = by_name[name].rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, torch.nn.Identity())


def choose_blocks(
    state: ModelState, ctx: StageContext, candidates: list[str], count: int
) -> list[dict]:
    """Greedily pick `count` blocks whose removal costs the least eval metric."""
    chosen: list[dict] = []
    current = state
    for _ in range(count):
        trials = []
        for name in [c for c in candidates if c not in {x["block"] for x in chosen}]:
            trial = current.with_module(copy.deepcopy(current.module))
            drop_blocks(trial.module, [name])
            trials.append((ctx.evaluate(trial), name, trial))
        if not trials:
            break
        best = max if ctx.metric.higher_is_better else min
        value, name, current = best(trials, key=lambda t: t[0])
        chosen.append({"block": name, "metric_after": value})
    return chosen


def check_block_names(names: list[str], candidates: list[str]) -> None:
    for name in names:
        if name not in candidates:
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StageError(
                f"prune.blocks: {name!r} is not a droppable block{hint}; blocks "
                f"whose output keeps their input's shape: {', '.join(candidates)}"
            )


def check_layer_options(model: ModelState, blocks: list[str], num_blocks: int | None) -> None:
    """`method: layer` needs blocks that exist, or no more blocks than the model has."""
    from mcomp.model.convert import example_inputs

    if not blocks and not num_blocks:
        raise StageError("prune: `method: layer` needs `blocks: [names]` or `num_blocks: N`")
    candidates = droppable_blocks(model.module, example_inputs(model, batch=1))
    check_block_names(blocks, candidates)
    if (num_blocks or 0) > len(candidates):
        raise StageError(
            f"prune.num_blocks: the model has only {len(candidates)} "
            f"droppable block(s): {', '.join(candidates) or 'none'}"
        )


def prune_blocks(model: ModelState, ctx: StageContext, options) -> list[dict]:
    """Drop the named blocks, then `num_blocks` more chosen by metric; what was dropped."""
    from mcomp.model.convert import example_inputs

    names = list(options.blocks)
    chosen = [{"block": name} for name in names]
    if options.num_blocks:
        candidates = [
            c for c in droppable_blocks(model.module, example_inputs(model, 1)) if c not in names
        ]
        chosen += choose_blocks(model, ctx, candidates, options.num_blocks)
    drop_blocks(model.module, [c["block"] for c in chosen])
    return chosen
