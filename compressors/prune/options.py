"""Options of the `prune` stage, and the layers they select (see stage.py for each method)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mcomp.compressors.prune.gradual import GradualOptions
from mcomp.compressors.select import select_layers
from mcomp.progress import Progress
from mcomp.stage import StageOptions


class PruneOptions(StageOptions):
    method: Literal["magnitude", "channel", "layer"] = Field(
        "magnitude",
        description="magnitude: zero the smallest weights (unstructured); channel: remove "
        "whole channels and neurons (structured, fewer MACs); layer: replace whole blocks "
        "with identity.",
    )
    sparsity: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Fraction of weights set to zero (magnitude) or of channels removed (channel).",
    )
    scope: Literal["global", "layer"] = Field(
        "global",
        description="global: one ranking across all chosen layers (layers get different "
        "sparsities); layer: each layer pruned to `sparsity` on its own.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns over module names (without `module.`/`_orig_mod.` "
        "prefixes) of the layers to prune.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns over module names left alone; a pattern that matches "
        "nothing is a warning.",
    )
    layer_types: list[Literal["Conv1d", "Conv2d", "Conv3d", "Linear", "LSTM", "GRU", "RNN"]] = (
        Field(
            default_factory=lambda: ["Conv1d", "Conv2d", "Conv3d", "Linear"],
            description="Module types that may be pruned. LSTM, GRU and RNN (magnitude "
            "pruning only: every input, hidden and projection matrix, not the biases) are "
            "opt-in: add them to the list.",
        )
    )
    importance: Literal["l1", "l2", "taylor", "bn_scale"] = Field(
        "l1",
        description="channel: how channels are ranked (L1 or L2 norm of the weights, "
        "first-order Taylor on labelled train batches, BatchNorm scale).",
    )
    fold_batchnorm: bool | Literal["auto"] = Field(
        "auto",
        description="Rank a Conv/Linear followed by BatchNorm on its BN-folded weights "
        "|w·gamma/sqrt(var+eps)| (what the network computes) instead of raw magnitudes. "
        "auto: folded for channel pruning with l1/l2, raw for magnitude pruning, as measured "
        "on the bundled BN ResNet (docs/stages.md).",
    )
    target_macs_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="channel: prune until MACs are at most this fraction of before "
        "(replaces `sparsity`).",
    )
    round_to: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="channel: keep every pruned layer's channel count a multiple of this "
        "(e.g. 8, kernel-friendly); null: any count.",
    )
    reconstruct: bool | Literal["auto"] = Field(
        "auto",
        description="one-shot magnitude or channel pruning: refit the pruned layers' weights "
        "and biases by least squares to what the unpruned model computed on real inputs "
        "(magnitude: each pruned layer's kept weights, the mask kept; channel: each layer that "
        "lost input channels; no labels, no training) from `data.calibration`, else "
        "`data.train`. auto: on when the recipe gives such inputs and the model has layer "
        "modules (not .pt2/TorchScript); true: required.",
    )
    reconstruct_mask: Literal["magnitude", "refit"] = Field(
        "refit",
        description="magnitude pruning with reconstruct: which weights each refitted layer "
        "zeroes. refit: the layer's count of zeros (from the magnitude ranking) placed where "
        "the refit absorbs them best (SparseGPT's mask selection, w²/[H⁻¹]ᵢᵢ² on the real "
        "inputs), or the magnitude mask where that leaves the smaller error; magnitude: the "
        "smallest weights, the ranking's own choice.",
    )
    reconstruct_samples: int = Field(
        128,
        ge=1,
        le=100_000,
        description="reconstruct: how many of those inputs (the first ones) the refit uses.",
    )
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
        le=10_000,
        description="layer: drop this many blocks, "
        "those whose removal costs the least eval metric.",
    )
    sensitivity: str | None = Field(
        None,
        description="magnitude: a sensitivity.json from "
        "`mcomp sensitivity` (relative to the recipe); sensitive "
        "layers get less sparsity for the same overall target.",
    )

    @model_validator(mode="after")
    def _recurrent_layers_take_magnitude_pruning(self) -> PruneOptions:
        recurrent = [t for t in self.layer_types if t in ("LSTM", "GRU", "RNN")]
        if recurrent and self.method != "magnitude":
            raise ValueError(
                f"layer_types {', '.join(recurrent)}: only `method: magnitude` prunes recurrent "
                f"layers (`{self.method}` pruning does not resize them); drop them from "
                "layer_types, or use method: magnitude"
            )
        return self

    @model_validator(mode="after")
    def _reconstruct_refits_one_shot_pruning(self) -> PruneOptions:
        if self.reconstruct is True and (self.method == "layer" or self.gradual is not None):
            raise ValueError(
                "reconstruct: refits one-shot `method: magnitude` or `channel` pruning; remove "
                "it, or drop `gradual` (gradual pruning's training recovers instead)"
            )
        return self


def select_prunable(
    root, options: PruneOptions, progress: Progress | None = None
) -> list[tuple[str, Any]]:
    """The layers `options` prune: of `layer_types`, matching `include`, not `exclude`
    (names without wrapper prefixes). With `progress`, unmatched patterns are warnings."""
    return select_layers(
        root,
        include=options.include,
        exclude=options.exclude,
        layer_types=list(options.layer_types),
        label="prune",
        progress=progress,
        verb="prune",
    )
