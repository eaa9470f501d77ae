"""Low-rank factorization: replace Linear and Conv2d layers by two thinner layers (truncated SVD).

    - lowrank:
        rank_ratio: 0.5        # rank = 50 % of each layer's full rank (min(out, in*kh*kw))
        # energy: 0.9          # or: smallest rank keeping 90 % of the singular-value energy
        # rank: 16             # or: one rank for every layer (error if above a layer's limit)
        # params_ratio: 0.5    # or: largest rank with at most 50 % of the layer's parameters
        include: ["*"]
        exclude: []
        layer_types: [Linear, Conv2d]
        keep_output_layer: true  # the model's last Linear/Conv2d is not factorized

A Linear W (out x in) ~ U_r S_r V_r^T becomes Linear(in -> r, no bias) then Linear(r -> out).
A Conv2d (groups=1) reshaped to out x (in*kh*kw) becomes a kh x kw conv to r channels (same
stride/padding/dilation, no bias) then a 1x1 conv to `out` with the original bias. sqrt(S)
goes to each factor. A layer whose factorization would not have fewer parameters
(r * (out + in*kh*kw) >= out * in*kh*kw) is left alone and listed under `skipped`.
By default the output layer (the last Linear/Conv2d of the model, as `prune` keeps it) is left
alone too: its rank is at most the number of classes, so a rank that halves its parameters
(4 of 10 on the digits CNN) throws away most of the logits' structure (-4 points after
finetuning vs +0.8 with it kept) for a few hundred parameters. `keep_output_layer: false`
factorizes it as well.
Per-layer params and MACs before/after are in the details. The model really gets smaller and
cheaper; accuracy usually needs a `finetune` (or `distill`) afterwards.
Method: Denton et al., "Exploiting Linear Structure Within Convolutional Networks", NeurIPS
2014; Jaderberg et al., "Speeding up CNNs with Low Rank Expansions", BMVC 2014.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from mcomp.errors import StageError
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions

RANK_CHOICES = ("rank", "rank_ratio", "energy", "params_ratio")


class LowRankOptions(StageOptions):
    rank: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="One rank for every chosen layer; above a layer's full rank is an error.",
    )
    rank_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Fraction of each layer's "
        "full rank (default 0.5 when no rank option is given).",
    )
    energy: float | None = Field(
        None, gt=0, le=1, description="Fraction of the squared singular values kept."
    )
    params_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Largest rank whose two factors hold at most this fraction of the parameters.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns over module names of the layers to factorize.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns over module names left alone; a pattern that matches "
        "nothing is a warning.",
    )
    layer_types: list[Literal["Linear", "Conv2d"]] = Field(
        default_factory=lambda: ["Linear", "Conv2d"],
        description="Module types that may be factorized (Conv2d with groups = 1 only).",
    )
    keep_output_layer: bool = Field(
        True, description="Leave the model's last Linear/Conv2d (the output layer) unfactorized."
    )

    @model_validator(mode="after")
    def _one_rank_rule(self) -> LowRankOptions:
        given = [name for name in RANK_CHOICES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(RANK_CHOICES)} (got {', '.join(given)})")
        if not given:
            self.rank_ratio = 0.5
        return self


class LowRankStage(Stage):
    """Truncated-SVD factorization of Linear and Conv2d layers into two layers."""

    name = "lowrank"
    Options = LowRankOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def check(self, model: ModelState, ctx: StageContext) -> None:
        targets = self._targets(model.module, ctx, warn=True)
        output = output_layer(model.module) if self.options.keep_output_layer else None
        if self.options.rank is not None:
            for name, module in targets:
                if module is output:
                    continue
                limit = full_rank(module)
                if self.options.rank > limit:
                    raise StageError(
                        f"lowrank: rank {self.options.rank} is above the limit "
                        f"{limit} of layer {name!r} (min of its output and input "
                        "sizes); use a smaller rank, rank_ratio, or exclude it"
                    )

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        module = model.module
        targets = self._targets(module, ctx, warn=False)
        spatial = _output_positions(model, [m for _, m in targets])
        layers, skipped = {}, {}
        output = output_layer(module) if self.options.keep_output_layer else None
        for name, layer in targets:
            if layer is output:
                skipped[name] = "output layer (keep_output_layer: true)"
                continue
            if getattr(layer, "groups", 1) != 1:
                skipped[name] = f"grouped convolution (groups={layer.groups})"
                continue
            rank, singular = self._rank(name, layer)
            before = layer.weight.numel()
            after = factored_params(layer, rank)
            if after >= before:
                skipped[name] = (
                    f"rank {rank} of {full_rank(layer)} would not reduce "
                    f"parameters ({after} >= {before})"
                )
                continue
            positions = spatial.get(id(layer), 1)
            _replace(module, layer, factorize(layer, rank))
            layers[name] = {
                "rank": rank,
                "full_rank": full_rank(layer),
                "energy_kept": round(_energy(singular, rank), 4),
                "params_before": before + _bias(layer),
                "params_after": after + _bias(layer),
                "macs_before": before * positions,
                "macs_after": after * positions,
            }
            _drop_mask(ctx, name)
        if not layers:
            raise StageError(
                "lowrank: no layer was factorized: "
                + "; ".join(f"{n}: {why}" for n, why in skipped.items())
                + " (choose a smaller rank, other layers, or "
                "keep_output_layer: false)"
            )
        self.details = {
            "layers": layers,
            "skipped": skipped,
            "params_before": sum(v["params_before"] for v in layers.values()),
            "params_after": sum(v["params_after"] for v in layers.values()),
            "macs_before": sum(v["macs_before"] for v in layers.values()),
            "macs_after": sum(v["macs_after"] for v in layers.values()),
        }
        self.notes.append(f"{len(layers)} layer(s) factorized into two; {len(skipped)} skipped")
        return model.with_module(module)

    def _rank(self, name: str, layer) -> tuple[int, Any]:
        import torch

        opts = self.options
        singular = torch.linalg.svdvals(_matrix(layer).detach().double())
        limit = full_rank(layer)
        if opts.rank is not None:
            rank = opts.rank
        elif opts.rank_ratio is not None:
            rank = max(1, round(opts.rank_ratio * limit))
        elif opts.energy is not None:
            share = torch.cumsum(singular**2, 0) / (singular**2).sum()
            rank = int((share < opts.energy - 1e-12).sum()) + 1
        else:
            out, inp = _matrix(layer).shape
            rank = max(1, math.floor(opts.params_ratio * out * inp / (out + inp)))
        if not 1 <= rank <= limit:
            raise StageError(f"lowrank: rank {rank} for layer {name!r} is outside 1..{limit}")
        return min(rank, limit), singular

    def _targets(self, root, ctx: StageContext, *, warn: bool) -> list[tuple[str, Any]]:
        from mcomp.compressors.select import select_layers

        opts = self.options
        return select_layers(
            root,
            include=opts.include,
            exclude=opts.exclude,
            layer_types=opts.layer_types,
            label=self.name,
            progress=ctx.progress if warn else None,
        )


def output_layer(root):
    """The model's last Linear/Conv2d in module order (its output layer), or None."""
    import torch

    layers = [m for m in root.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return layers[-1] if layers else None


def full_rank(layer) -> int:
    """The largest rank of the layer's weight matrix: min(out, in * kh * kw)."""
    out, inp = _matrix(layer).shape
    return min(out, inp)


def factored_params(layer, rank: int) -> int:
    """Weights of the two factors (biases not counted)."""
    out, inp = _matrix(layer).shape
    return rank * (out + inp)


def factorize(layer, rank: int):
    """Two layers whose composition is the rank-`rank` SVD approximation of `layer`."""
    import torch
    from torch import nn

    matrix = _matrix(layer).detach().double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(layer.weight.dtype)
    second_w = (u[:, :rank] * root[None, :]).to(layer.weight.dtype)
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
        second_shape = second_w.shape
    else:
        first = nn.Conv2d(
            layer.in_channels,
            rank,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
        second_shape = (layer.out_channels, rank, 1, 1)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second_shape))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second).to(layer.weight.device)


def _matrix(layer):
    return layer.weight.reshape(layer.weight.shape[0], -1)


def _bias(layer) -> int:
    return 0 if layer.bias is None else layer.bias.numel()


def _energy(singular, rank: int) -> float:
    squared = singular**2
    return float(squared[:rank].sum() / squared.sum()) if float(squared.sum()) > 0 else 1.0


def _output_positions(model: ModelState, layers: list) -> dict[int, int]:
    """Output positions per sample (H_out * W_out) of each conv, found by one forward pass."""
    import torch

    from mcomp.model.convert import example_inputs

    positions: dict[int, int] = {}
    handles = [
        layer.register_forward_hook(
            lambda m, _i, out: positions.__setitem__(id(m), math.prod(out.shape[2:]))
        )
        for layer in layers
        if isinstance(layer, torch.nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model.module(*example_inputs(model, batch=1))
    finally:
        for handle in handles:
            handle.remove()
    return positions


def _replace(root, old, new) -> None:
    for parent in root.modules():
        for child_name, child in parent.named_children():
            if child is old:
                setattr(parent, child_name, new)
                return


def _drop_mask(ctx: StageContext, name: str) -> None:
    # The factorized weights are dense; an earlier pruning mask no longer applies.
    ctx.facts.masks.pop(f"{name}.weight", None)
