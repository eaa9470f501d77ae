"""Magnitude pruning (unstructured L1) with `torch.nn.utils.prune`, made permanent.

    - prune:
        sparsity: 0.7          # fraction of the selected weights set to zero
        scope: global          # global: one threshold across layers; layer: each layer alone
        include: ["*"]         # glob patterns over module names (default: every Conv/Linear)
        exclude: ["fc2"]

After pruning, the reparametrisation is removed (`prune.remove`) so the saved model carries
real zeros instead of weights plus masks (which would make the file grow). The masks are kept
in `ctx.shared["sparsity_masks"]` so that `finetune` keeps the zeros at zero.
Method: Han et al., "Learning both Weights and Connections", NeurIPS 2015.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field

from mcomp.errors import StageError
from mcomp.model_state import ModelKind, ModelState
from mcomp.module_names import strip_wrapper_prefix
from mcomp.stage import Stage, StageContext, StageOptions

MASKS_KEY = "sparsity_masks"  # ctx.shared: {parameter name: bool mask of kept weights}


class PruneOptions(StageOptions):
    sparsity: float = Field(0.5, gt=0, lt=1, description="Fraction of weights set to zero.")
    scope: Literal["global", "layer"] = "global"
    include: list[str] = Field(default_factory=lambda: ["*"],
                               description="Glob patterns over module names.")
    exclude: list[str] = Field(default_factory=list)
    layer_types: list[Literal["Conv1d", "Conv2d", "Conv3d", "Linear"]] = Field(
        default_factory=lambda: ["Conv1d", "Conv2d", "Conv3d", "Linear"])


class PruneStage(Stage):
    """Unstructured L1 magnitude pruning of Conv/Linear weights, global or per layer."""

    name = "prune"
    Options = PruneOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def check(self, model: ModelState, ctx: StageContext) -> None:
        select_modules(model.module, self.options, ctx, warn=True)

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        import torch
        from torch.nn.utils import prune

        targets = select_modules(model.module, self.options, ctx, warn=False)
        params = [(module, "weight") for _, module in targets]
        amount = self.options.sparsity
        if self.options.scope == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for module, attr in params:
                prune.l1_unstructured(module, attr, amount=amount)
        masks = ctx.shared.setdefault(MASKS_KEY, {})
        per_layer = {}
        for name, module in targets:
            mask = module.weight_mask.detach().clone().bool()
            prune.remove(module, "weight")
            masks[f"{name}.weight"] = mask
            per_layer[name] = round(1.0 - float(mask.float().mean()), 4)
        with torch.no_grad():
            pruned = sum(int((~m).sum()) for m in masks.values())
        self.details = {"layers": per_layer, "pruned_weights": pruned}
        self.notes.append("unstructured sparsity: storage only (smaller compressed file, "
                          "no latency change on dense runtimes)")
        return model.with_module(model.module)


def select_modules(root, options: PruneOptions, ctx: StageContext, *,
                   warn: bool) -> list[tuple[str, object]]:
    """Modules of the chosen types whose names match `include` and none of `exclude`."""
    candidates = [(strip_wrapper_prefix(name), module) for name, module in root.named_modules()
                  if type(module).__name__ in options.layer_types]
    for pattern in options.include + options.exclude:
        if warn and not any(fnmatch.fnmatchcase(name, pattern) for name, _ in candidates):
            ctx.progress.warn(f"prune: pattern {pattern!r} matches no "
                              f"{'/'.join(options.layer_types)} module")
    chosen = [(name, module) for name, module in candidates
              if any(fnmatch.fnmatchcase(name, p) for p in options.include)
              and not any(fnmatch.fnmatchcase(name, p) for p in options.exclude)]
    if not chosen:
        raise StageError("prune: no layer left to prune after include/exclude; layers are: "
                         + ", ".join(name for name, _ in candidates[:20]))
    return chosen
