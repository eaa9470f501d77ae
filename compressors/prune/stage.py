"""Pruning: unstructured magnitude pruning, structured channel pruning, or whole blocks.

    - prune:
        method: magnitude      # magnitude (unstructured zeros) | channel (removes channels)
                               #   | layer (replaces blocks with identity)
        sparsity: 0.7          # magnitude: fraction of weights zeroed; channel: of channels removed
        scope: global          # global: one ranking across layers; layer: each layer alone
        include: ["*"]         # glob patterns over module names (default: every Conv/Linear)
        exclude: ["fc2"]
        importance: l1         # channel only: l1 | l2 | taylor | bn_scale
        fold_batchnorm: auto   # folded BN weights for channel pruning, raw for magnitude
        target_macs_ratio: 0.5 # channel only: prune until MACs <= 50 % (instead of sparsity)
        round_to: 8            # channel only: keep channel counts multiples of 8
        reconstruct: auto      # one-shot: refit the pruned layers (magnitude: the kept
                               #   weights; channel: the layers that lost inputs) to the
                               #   unpruned outputs on data.calibration (no labels, no
                               #   training); auto: whenever there are inputs to refit on
        gradual: {steps: 8}    # raise sparsity during training (AGP) instead of at once
        # gradual: {steps: 8, distill: {}}   # ... against the original model (default
        #                                    #   when data.train has no labels)

One file per method: `magnitude.py` (real zeros; the masks go to `ctx.facts.masks` so that
training stages keep the zeros at zero), `channel.py` (whole output channels of convolutions
and neurons of Linear layers, coupled layers pruned consistently: the model really gets fewer
parameters and MACs; the final layer, the model's output, is never pruned), `layer.py`,
`reconstruct.py` (least-squares refits without labels: the kept weights after magnitude
pruning, the layers that lost input channels after channel pruning), `gradual.py` (AGP
schedule), `sensitivity.py` (per-layer sparsity from `mcomp sensitivity`).
Options and the layer selection are in `options.py`.
"""

from __future__ import annotations

from mcomp.compressors.prune.channel_allocation import MAX_LAYER_RATIO
from mcomp.compressors.prune.options import PruneOptions, select_prunable
from mcomp.errors import StageError
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext
from mcomp.training.masks import mask_sparsity, weight_tensors

RATIO_TOLERANCE = 0.05  # achieved vs requested channel ratio, beyond which a warning says so
STORAGE_ONLY = (
    "unstructured sparsity: storage only (smaller compressed file, "
    "no latency change on dense runtimes)"
)


class PruneStage(Stage):
    """Magnitude (unstructured), channel (structured) or layer pruning, one-shot or gradual."""

    name = "prune"
    Options = PruneOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def runs_on_all_ranks(self) -> bool:
        return self.options.gradual is not None  # gradual pruning trains

    def check(self, model: ModelState, ctx: StageContext) -> None:
        opts = self.options
        if opts.method == "layer":
            from mcomp.compressors.prune.layer import check_layer_options

            return check_layer_options(model, opts.blocks, opts.num_blocks)
        select_prunable(model.module, opts, ctx.progress)
        train = ctx.datasets.train
        taylor = opts.method == "channel" and opts.importance == "taylor"
        if taylor and (train is None or train.labels is None):
            # (gradual pruning without labels distils, but Taylor ranks on the task loss)
            raise StageError(
                "prune: importance 'taylor' needs labelled training batches; give "
                "`data.train` with labels, or use importance l1/l2/bn_scale"
            )
        if opts.gradual is not None:
            from mcomp.compressors.prune.gradual import check_gradual

            check_gradual(model, ctx, opts.gradual)
        if opts.method == "magnitude" and (opts.target_macs_ratio or opts.round_to):
            raise StageError(
                "prune: target_macs_ratio and round_to apply to `method: channel`; "
                "magnitude pruning zeroes weights without changing MACs"
            )
        if opts.reconstruct is True:
            _check_reconstruct(ctx)
        if opts.sensitivity is not None:
            from mcomp.compressors.prune.sensitivity import read_sensitivity

            if opts.method != "magnitude" or opts.gradual is not None:
                raise StageError("prune.sensitivity: supported for one-shot `method: magnitude`")
            read_sensitivity(ctx.recipe_dir / opts.sensitivity)

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        if self.options.gradual is not None:
            self.notes += ctx.datasets.train_notes()
        if self.options.method == "channel":
            return self._prune_channels(model, ctx)
        if self.options.method == "layer":
            return self._prune_layers(model, ctx)
        return self._prune_magnitude(model, ctx)

    def _prune_channels(self, model: ModelState, ctx: StageContext) -> ModelState:
        import copy

        from mcomp.compressors.prune.channel import prune_channels_of_model

        skip = _why_not_reconstruct(self.options, model, ctx)
        # the refit's target is the unpruned model's layer outputs: a copy only for it
        dense = copy.deepcopy(model.module) if skip is None else None
        kept: dict = {}
        self.details = prune_channels_of_model(
            model, self.options, ctx, self._distill(ctx), kept_rows=kept
        )
        if dense is not None:
            rows = {name: kept[m] for name, m in model.module.named_modules() if m in kept}
            self.details["reconstruct"] = self._reconstruct_channels(model, ctx, dense, rows)
            del dense
        elif self.options.reconstruct == "auto":
            self.details["reconstruct"] = f"not applied: {skip}"
        self._compare_ratios(ctx)
        ctx.facts.masks = {}  # earlier unstructured masks no longer fit the new shapes
        self.notes.append("structured: channels removed; fewer MACs, smaller dense model")
        return model.with_module(model.module)

    def _compare_ratios(self, ctx: StageContext) -> None:
        """Warn when the channels removed differ from `sparsity` by more than 0.05 (a layer
        keeps at least a tenth of its channels; `round_to` rounds each layer)."""
        achieved = self.details.get("channel_ratio_achieved")
        if self.options.target_macs_ratio is not None or achieved is None:
            return
        if abs(achieved - self.options.sparsity) > RATIO_TOLERANCE:
            message = (
                f"channel pruning removed {achieved:.0%} of the prunable channels, not the "
                f"{self.options.sparsity:.0%} asked for (each layer keeps at least "
                f"{1 - MAX_LAYER_RATIO:.0%}"
                + (
                    f", round_to {self.options.round_to} rounds each layer"
                    if self.options.round_to
                    else ""
                )
                + "); target_macs_ratio sets the cost directly"
            )
            ctx.progress.warn(f"prune: {message}")
            self.notes.append(message)

    def _prune_magnitude(self, model: ModelState, ctx: StageContext) -> ModelState:
        opts = self.options
        targets = select_prunable(model.module, opts)
        if opts.gradual is not None:
            from mcomp.compressors.prune.gradual import prune_magnitude_gradually

            details = prune_magnitude_gradually(
                model,
                ctx,
                targets,
                final=opts.sparsity,
                scope=opts.scope,
                options=opts.gradual,
                distill=self._distill(ctx),
            )
            masks = details.pop("masks")
        else:
            from mcomp.compressors.prune.magnitude import prune_magnitude

            per_layer = None
            if opts.sensitivity is not None:
                from mcomp.compressors.prune.sensitivity import allocate_sparsity, read_sensitivity

                table = read_sensitivity(ctx.recipe_dir / opts.sensitivity)
                per_layer = allocate_sparsity(table, opts.sparsity, [n for n, _ in targets])
            norms = self._batchnorms(model, targets) if opts.fold_batchnorm is True else {}
            skip = _why_not_reconstruct(opts, model, ctx)
            # the refit's target is the dense layers' output: keep their weights only for it
            dense = {}
            if skip is None:
                dense = {
                    key: weight.detach().clone()
                    for n, m in targets
                    for key, weight in weight_tensors(n, m)
                }
            masks = prune_magnitude(
                targets, sparsity=opts.sparsity, scope=opts.scope, per_layer=per_layer, norms=norms
            )
            details = {"bn_folded_layers": sorted(n for n, m in targets if m in norms)}
            if skip is None:
                details["reconstruct"] = self._reconstruct(model, ctx, targets, masks, dense)
            elif opts.reconstruct == "auto":
                details["reconstruct"] = f"not applied: {skip}"
            del dense
        ctx.facts.masks.update(masks)
        pruned = sum(int((~m).sum()) for m in masks.values())
        self.details = {**details, "layers": mask_sparsity(masks), "pruned_weights": pruned}
        self.notes.append(STORAGE_ONLY)
        return model.with_module(model.module)

    def _reconstruct(self, model: ModelState, ctx: StageContext, targets, masks, dense) -> dict:
        """Refit the pruned layers on the first `reconstruct_samples` unlabelled inputs."""
        from mcomp.compressors.prune.reconstruct import reconstruct_pruned

        batches, which = self._refit_batches(model, ctx)
        choose = self.options.reconstruct_mask == "refit"
        facts = reconstruct_pruned(
            model.module, targets, masks, dense, batches, ctx.progress, choose_mask=choose
        )
        self._refit_notes(ctx, facts, "error_magnitude", which, "the magnitude-pruned weights")
        return {"split": which, **facts}

    def _reconstruct_channels(self, model: ModelState, ctx: StageContext, dense, rows) -> dict:
        """Refit the layers that lost input channels to the unpruned model's layer outputs."""
        from mcomp.compressors.prune.reconstruct import reconstruct_channels

        batches, which = self._refit_batches(model, ctx)
        facts = reconstruct_channels(model.module, dense, rows, batches, ctx.progress)
        self._refit_notes(ctx, facts, "error_pruned", which, "the channel-pruned weights")
        return {"split": which, **facts}

    def _refit_batches(self, model: ModelState, ctx: StageContext) -> tuple[list, str]:
        """The first `reconstruct_samples` inputs of data.calibration (else data.train) as
        the model's positional input batches, and which split they came from."""
        import numpy as np
        import torch

        split = ctx.datasets.calibration or ctx.datasets.train
        which = "calibration" if ctx.datasets.calibration else "train"
        count = min(self.options.reconstruct_samples, len(split))
        device = next(model.module.parameters()).device
        batches = [
            tuple(torch.from_numpy(inputs[spec.name]).to(device) for spec in model.inputs)
            for inputs, _ in split.subset(np.arange(count)).batches(ctx.batch_size)
        ]
        if self.options.reconstruct == "auto":
            ctx.progress.log(
                f"prune: refitting the pruned layers on {count} {which} inputs "
                "(prune.reconstruct: auto; false turns it off)"
            )
        return batches, which

    def _refit_notes(self, ctx, facts: dict, before_key: str, which: str, kept: str) -> None:
        """A note with the mean layer error before and after, and which layers kept theirs
        (a warning each when `reconstruct: true` asked for it)."""
        layers = facts["layers"]
        count = facts["samples"]
        if layers:
            before = sum(v[before_key] for v in layers.values()) / len(layers)
            after = sum(v["error_reconstructed"] for v in layers.values()) / len(layers)
            self.notes.append(
                f"reconstructed {len(layers)} layers on {count} {which} inputs: mean relative "
                f"layer output error {before:.3f} -> {after:.3f}"
            )
        skipped = facts["not_reconstructed"]
        if self.options.reconstruct is True:  # asked for: each layer it could not refit
            for name, why in skipped.items():
                ctx.progress.warn(f"prune.reconstruct: {name} keeps {kept} ({why})")
        elif skipped:
            n = len(skipped)
            self.notes.append(
                f"{n} layer{'s' if n > 1 else ''} kept {kept} "
                "(details.reconstruct.not_reconstructed says why)"
            )

    def _distill(self, ctx: StageContext):
        """The distillation settings of gradual pruning (None: on labels, or one-shot); the
        default without labels is said in a log line and a note."""
        from mcomp.compressors.prune.gradual import DEFAULT_DISTILL_NOTE, gradual_distill

        if self.options.gradual is None:
            return None
        settings = gradual_distill(self.options.gradual, ctx.datasets.train)
        if settings is not None and self.options.gradual.distill is None:
            ctx.progress.log(f"prune: {DEFAULT_DISTILL_NOTE} (prune.gradual.distill sets how)")
            self.notes.append(DEFAULT_DISTILL_NOTE)
        return settings

    @staticmethod
    def _batchnorms(model: ModelState, targets: list) -> dict:
        """{target layer: the BatchNorm after it}, for ranking on folded weights."""
        from mcomp.compressors.prune.batchnorm import conv_bn_pairs
        from mcomp.model.convert import example_inputs

        chosen = {module for _, module in targets}
        pairs = conv_bn_pairs(model.module, example_inputs(model, batch=2))
        return {layer: norm for layer, norm in pairs.items() if layer in chosen}

    def _prune_layers(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.compressors.prune.layer import prune_blocks

        self.details = {"dropped_blocks": prune_blocks(model, ctx, self.options)}
        ctx.facts.masks = {}  # parameter names changed
        self.notes.append("layer: blocks replaced by identity; fewer MACs and parameters")
        return model.with_module(model.module)


def _check_reconstruct(ctx: StageContext) -> None:
    """`reconstruct` refits on inputs the recipe gives (the options checked the method)."""
    if ctx.datasets.calibration is None and ctx.datasets.train is None:
        raise StageError(
            "prune.reconstruct: refits the pruned layers on real inputs and the recipe gives "
            "none; add `data.calibration` (no labels needed)"
        )


def _why_not_reconstruct(opts, model: ModelState, ctx: StageContext) -> str | None:
    """None when this one-shot magnitude or channel pruning is refitted, else why not (`auto`
    only: an explicit `true` was checked before any stage ran)."""
    from mcomp.model.format_limits import module_kind

    if opts.reconstruct is False:
        return "reconstruct: false"
    if opts.gradual is not None:
        return "gradual pruning's training recovers instead"
    if ctx.datasets.calibration is None and ctx.datasets.train is None:
        return "the recipe gives no calibration or train inputs"
    kind = module_kind(model.module)
    if kind is not None:
        return f"a {kind} keeps no layer modules to watch"
    return None
