"""Pruning: unstructured magnitude pruning, or structured channel pruning.

    - prune:
        method: magnitude      # magnitude (unstructured zeros) | channel (removes channels)
        sparsity: 0.7          # magnitude: fraction of weights zeroed; channel: of channels removed
        scope: global          # global: one ranking across layers; layer: each layer alone
        include: ["*"]         # glob patterns over module names (default: every Conv/Linear)
        exclude: ["fc2"]
        importance: l1         # channel only: l1 | l2 | taylor | bn_scale
        target_macs_ratio: 0.5 # channel only: prune until MACs <= 50 % (instead of sparsity)
        round_to: 8            # channel only: keep channel counts multiples of 8

`method: channel` removes whole output channels of Conv layers and neurons of Linear layers,
with coupled layers pruned consistently (see channel_pruning.py); the model really gets fewer
parameters and MACs and runs faster. The final layer (the model's output) is never pruned.

After pruning, the reparametrisation is removed (`prune.remove`) so the saved model carries
real zeros instead of weights plus masks (which would make the file grow). The masks are kept
in `ctx.shared["sparsity_masks"]` so that `finetune` keeps the zeros at zero.
Method: Han et al., "Learning both Weights and Connections", NeurIPS 2015.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field

from mcomp.compressors.prune.gradual import GradualOptions
from mcomp.errors import StageError
from mcomp.model.module_names import strip_wrapper_prefix
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions

MASKS_KEY = "sparsity_masks"  # ctx.shared: {parameter name: bool mask of kept weights}


class PruneOptions(StageOptions):
    method: Literal["magnitude", "channel", "layer"] = "magnitude"
    sparsity: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Fraction of weights set to zero (magnitude) or of channels removed (channel).",
    )
    scope: Literal["global", "layer"] = "global"
    include: list[str] = Field(
        default_factory=lambda: ["*"], description="Glob patterns over module names."
    )
    exclude: list[str] = Field(default_factory=list)
    layer_types: list[Literal["Conv1d", "Conv2d", "Conv3d", "Linear"]] = Field(
        default_factory=lambda: ["Conv1d", "Conv2d", "Conv3d", "Linear"]
    )
    importance: Literal["l1", "l2", "taylor", "bn_scale"] = "l1"
    target_macs_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="channel: prune until MACs are at most this fraction of before.",
    )
    round_to: int | None = Field(None, ge=1, description="channel: channel-count multiple.")
    gradual: GradualOptions | None = Field(
        None, description="Raise sparsity step by step during training (AGP) instead of at once."
    )
    blocks: list[str] = Field(
        default_factory=list,
        description="layer: names of shape-preserving blocks to replace with identity.",
    )
    num_blocks: int | None = Field(
        None,
        ge=1,
        description="layer: drop this many blocks, "
        "those whose removal costs the least eval metric.",
    )
    sensitivity: str | None = Field(
        None,
        description="magnitude: a sensitivity.json from "
        "`mcomp sensitivity` (relative to the recipe); sensitive "
        "layers get less sparsity for the same overall target.",
    )


class PruneStage(Stage):
    """Magnitude (unstructured) or channel (structured) pruning, one-shot or gradual."""

    name = "prune"
    Options = PruneOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def runs_on_all_ranks(self) -> bool:
        return self.options.gradual is not None  # gradual pruning trains

    def check(self, model: ModelState, ctx: StageContext) -> None:
        if self.options.method == "layer":
            return self._check_layer_options(model)
        select_modules(model.module, self.options, ctx, warn=True)
        if self.options.method == "magnitude" and (
            self.options.target_macs_ratio or self.options.round_to
        ):
            raise StageError(
                "prune: target_macs_ratio and round_to apply to `method: channel`; "
                "magnitude pruning zeroes weights without changing MACs"
            )
        if self.options.sensitivity is not None:
            if self.options.method != "magnitude" or self.options.gradual is not None:
                raise StageError("prune.sensitivity: supported for one-shot `method: magnitude`")
            self._sensitivity_table(ctx)

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        if self.options.method == "channel":
            return self._prune_channels(model, ctx)
        if self.options.method == "layer":
            return self._prune_layers(model, ctx)
        return self._prune_magnitude(model, ctx)

    def _prune_channels(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.compressors.prune.channel import prune_channels
        from mcomp.model.convert import example_inputs

        module = model.module
        chosen = {id(m) for _, m in select_modules(module, self.options, ctx, warn=False)}
        prunable = [m for _, m in _candidates(module, self.options)]
        # Keep the output layer: removing its neurons would change the model's outputs.
        ignored = [m for m in prunable if id(m) not in chosen] + prunable[-1:]
        opts = self.options
        common = dict(
            importance=opts.importance,
            global_scope=opts.scope == "global",
            ignored=ignored,
            round_to=opts.round_to,
            loss_fn=_loss_fn(ctx),
            grad_batches=_grad_batches(model, ctx) if opts.importance == "taylor" else None,
        )
        example = example_inputs(model, batch=1)
        if opts.gradual is not None:
            self.details = self._prune_channels_gradually(model, ctx, example, common)
        else:
            self.details = prune_channels(
                module,
                example,
                ratio=opts.sparsity,
                target_macs_ratio=opts.target_macs_ratio,
                **common,
            )
        # Earlier unstructured masks no longer fit the new shapes.
        ctx.shared.pop(MASKS_KEY, None)
        self.notes.append("structured: channels removed; fewer MACs, smaller dense model")
        return model.with_module(module)

    def _prune_channels_gradually(
        self, model: ModelState, ctx: StageContext, example, common: dict
    ) -> dict:
        import torch_pruning as tp

        from mcomp.compressors.prune.channel import iterative_pruner
        from mcomp.compressors.prune.gradual import agp_sparsity, prune_channels_gradually

        gradual = self.options.gradual
        macs_before, params_before = tp.utils.count_ops_and_params(model.module, example)

        def schedule(ratio: float, steps: int) -> list[float]:
            return [
                agp_sparsity(ratio, gradual.initial_sparsity, k, steps) for k in range(steps + 1)
            ]

        step = iterative_pruner(
            model.module,
            example,
            ratio=self.options.sparsity,
            steps=gradual.steps,
            schedule=schedule,
            **common,
        )
        details = prune_channels_gradually(model, ctx, prune_step=step, options=gradual)
        macs_after, params_after = tp.utils.count_ops_and_params(model.module, example)
        return {
            **details,
            "macs_before": int(macs_before),
            "macs_after": int(macs_after),
            "params_before": int(params_before),
            "params_after": int(params_after),
        }

    def _prune_magnitude(self, model: ModelState, ctx: StageContext) -> ModelState:
        import torch
        from torch.nn.utils import prune

        targets = select_modules(model.module, self.options, ctx, warn=False)
        if self.options.gradual is not None:
            return self._prune_magnitude_gradually(model, ctx, targets)
        params = [(module, "weight") for _, module in targets]
        amount = self.options.sparsity
        if self.options.sensitivity is not None:
            from mcomp.compressors.prune.sensitivity import allocate_sparsity

            amounts = allocate_sparsity(
                self._sensitivity_table(ctx), amount, [name for name, _ in targets]
            )
            for name, module in targets:
                prune.l1_unstructured(module, "weight", amount=amounts.get(name, amount))
        elif self.options.scope == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for module, attr in params:
                prune.l1_unstructured(module, attr, amount=amount)
        masks = {}
        for name, module in targets:
            masks[f"{name}.weight"] = module.weight_mask.detach().clone().bool()
            prune.remove(module, "weight")
        with torch.no_grad():
            pruned = sum(int((~m).sum()) for m in masks.values())
        self.details = {"layers": _record_masks(ctx, masks), "pruned_weights": pruned}
        self._label_storage_only()
        return model.with_module(model.module)

    def _prune_magnitude_gradually(
        self, model: ModelState, ctx: StageContext, targets: list
    ) -> ModelState:
        from mcomp.compressors.prune.gradual import prune_magnitude_gradually

        details = prune_magnitude_gradually(
            model,
            ctx,
            targets,
            final=self.options.sparsity,
            scope=self.options.scope,
            options=self.options.gradual,
        )
        masks = details.pop("masks")
        pruned = sum(int((~m).sum()) for m in masks.values())
        self.details = {**details, "layers": _record_masks(ctx, masks), "pruned_weights": pruned}
        self._label_storage_only()
        return model.with_module(model.module)

    def _check_layer_options(self, model: ModelState) -> None:
        from mcomp.compressors.prune.layer import check_block_names, droppable_blocks
        from mcomp.model.convert import example_inputs

        if not self.options.blocks and not self.options.num_blocks:
            raise StageError("prune: `method: layer` needs `blocks: [names]` or `num_blocks: N`")
        candidates = droppable_blocks(model.module, example_inputs(model, batch=1))
        check_block_names(self.options.blocks, candidates)
        if (self.options.num_blocks or 0) > len(candidates):
            raise StageError(
                f"prune.num_blocks: the model has only {len(candidates)} "
                f"droppable block(s): {', '.join(candidates) or 'none'}"
            )

    def _prune_layers(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.compressors.prune.layer import choose_blocks, drop_blocks, droppable_blocks
        from mcomp.model.convert import example_inputs

        names = list(self.options.blocks)
        chosen = [{"block": name} for name in names]
        if self.options.num_blocks:
            candidates = [
                c
                for c in droppable_blocks(model.module, example_inputs(model, 1))
                if c not in names
            ]
            chosen += choose_blocks(model, ctx, candidates, self.options.num_blocks)
        drop_blocks(model.module, [c["block"] for c in chosen])
        ctx.shared.pop(MASKS_KEY, None)  # parameter names changed
        self.details = {"dropped_blocks": chosen}
        self.notes.append("layer: blocks replaced by identity; fewer MACs and parameters")
        return model.with_module(model.module)

    def _sensitivity_table(self, ctx: StageContext) -> dict:
        import json

        path = ctx.recipe_dir / self.options.sensitivity
        try:
            table = json.loads(path.read_text())
            table["layers"]  # noqa: B018  (the one key this stage needs)
        except (OSError, ValueError, KeyError, TypeError):
            raise StageError(
                f"prune.sensitivity: {path} is not a sensitivity.json written by "
                "`mcomp sensitivity RECIPE`; run it first"
            ) from None
        return table

    def _label_storage_only(self) -> None:
        self.notes.append(
            "unstructured sparsity: storage only (smaller compressed file, "
            "no latency change on dense runtimes)"
        )


def _record_masks(ctx: StageContext, masks: dict) -> dict[str, float]:
    """Keep the masks for later training stages; return per-layer sparsity."""
    ctx.shared.setdefault(MASKS_KEY, {}).update(masks)
    return {
        name.removesuffix(".weight"): round(1.0 - float(mask.float().mean()), 4)
        for name, mask in masks.items()
    }


def _candidates(root, options: PruneOptions) -> list[tuple[str, object]]:
    return [
        (strip_wrapper_prefix(name), module)
        for name, module in root.named_modules()
        if type(module).__name__ in options.layer_types
    ]


def _grad_batches(model: ModelState, ctx: StageContext, count: int = 4) -> list:
    """A few labelled training batches for Taylor importance."""
    import torch

    split = ctx.datasets.train
    if split is None or split.labels is None:
        return []
    batches = []
    for inputs, labels in split.batches(ctx.batch_size):
        tensors = tuple(torch.from_numpy(inputs[spec.name]) for spec in model.inputs)
        batches.append((tensors, torch.from_numpy(labels)))
        if len(batches) == count:
            break
    return batches


def _loss_fn(ctx: StageContext):
    import torch.nn.functional as F

    from mcomp.recipe.schema import Task

    if ctx.task == Task.CLASSIFICATION:
        return lambda outputs, labels: F.cross_entropy(outputs, labels.long())
    return lambda outputs, labels: F.mse_loss(outputs, labels.to(outputs.dtype).view_as(outputs))


def select_modules(
    root, options: PruneOptions, ctx: StageContext, *, warn: bool
) -> list[tuple[str, object]]:
    """Modules of the chosen types whose names match `include` and none of `exclude`."""
    candidates = _candidates(root, options)
    if not candidates:
        raise StageError(
            f"prune: the model has no {'/'.join(options.layer_types)} modules to "
            "prune (a .pt2 or TorchScript file keeps none); load a state_dict with "
            "its `model.factory` instead"
        )
    for pattern in options.include + options.exclude:
        if warn and not any(fnmatch.fnmatchcase(name, pattern) for name, _ in candidates):
            ctx.progress.warn(
                f"prune: pattern {pattern!r} matches no {'/'.join(options.layer_types)} module"
            )
    chosen = [
        (name, module)
        for name, module in candidates
        if any(fnmatch.fnmatchcase(name, p) for p in options.include)
        and not any(fnmatch.fnmatchcase(name, p) for p in options.exclude)
    ]
    if not chosen:
        raise StageError(
            "prune: no layer left to prune after include/exclude; layers are: "
            + ", ".join(name for name, _ in candidates[:20])
        )
    return chosen
