"""Weight sharing: k-means clustering of each layer's weights into a small codebook.

    - cluster:
        clusters: 16           # 2..256 shared values per layer (zeros included)
        init: linear           # linear (evenly spaced over [min, max]) | kmeans++
        iterations: 30         # Lloyd iterations at most
        include: ["*"]
        exclude: []
        finetune_epochs: 0     # > 0: train the centroids (shared gradients) on the train split
        lr: 0.0001
        storage: indices       # indices (uint8 index + codebook in the ONNX file) | float

Each chosen layer's weight takes at most `clusters` distinct values. Weights that are exactly
zero (from pruning) are a cluster of their own and stay exactly 0, so a pruned model keeps its
sparsity; the other weights share the remaining `clusters - 1` centroids. With
`finetune_epochs`, the layers are reparametrised as `weight = centroids[index]`, so the gradient
of a centroid is the sum of its members' gradients (Deep Compression) and the model trains
through the one loop (`mcomp.training.loop.train_module`); the best checkpoint is kept.

The model stays a torch module with fp32 weights (later torch stages still apply). Its ONNX
form, which the pipeline measures, converts for `quantize` and writes when cluster is the last
stage, depends on `storage`: `indices` (default) stores each clustered weight as a uint8
index tensor plus an fp32 codebook rebuilt by Cast+Gather (`mcomp.compressors.cluster.storage`;
lossless, checked against the float export), `float` as plain fp32 tensors (the deflate size
alone shows the sharing). `quantize` folds the indices back to float weights before quantizing.
A later stage that changes the module (finetune, prune) drops the index-coded form.
The details give `index_coded_bytes`: the ideal size with log2(k)-bit indices plus an fp32
codebook per clustered layer and fp32 for every other parameter.
Method: Han, Mao & Dally, "Deep Compression", ICLR 2016.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions


class ClusterOptions(StageOptions):
    clusters: int = Field(16, ge=2, le=256, description="Shared values per layer (2..256).")
    init: Literal["linear", "kmeans++"] = Field(
        "linear",
        description="Initial centroids: linear (evenly spaced over [min, max]) or kmeans++ "
        "(seeded).",
    )
    iterations: int = Field(30, ge=1, le=1000, description="Lloyd iterations at most.")
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns over module names of the layers to cluster.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns over module names left alone; a pattern that matches "
        "nothing is a warning.",
    )
    layer_types: list[Literal["Conv1d", "Conv2d", "Conv3d", "Linear"]] = Field(
        default_factory=lambda: ["Conv1d", "Conv2d", "Conv3d", "Linear"],
        description="Module types whose weights may be clustered.",
    )
    finetune_epochs: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Epochs training the centroids on the train split (shared gradients); 0: none.",
    )
    lr: float = Field(1e-4, gt=0, description="Learning rate of centroid training.")
    storage: Literal["indices", "float"] = Field(
        "indices",
        description="ONNX form of clustered weights: uint8 indices + codebook "
        "(Gather), or plain float tensors.",
    )


class ClusterStage(Stage):
    """k-means weight sharing per layer; zeros stay zero; optional centroid finetuning."""

    name = "cluster"
    Options = ClusterOptions
    consumes = ModelKind.TORCH
    produces = ModelKind.TORCH

    def check(self, model: ModelState, ctx: StageContext) -> None:
        self._targets(model.module, ctx, warn=True)

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        import torch

        opts = self.options
        targets = self._targets(model.module, ctx, warn=False)
        layers, codes = {}, {}
        for index, (name, layer) in enumerate(targets):
            weight = layer.weight.detach()
            centroids, assignment, keep = cluster_weights(
                weight,
                opts.clusters,
                init=opts.init,
                iterations=opts.iterations,
                seed=ctx.seed + index,
            )
            with torch.no_grad():
                layer.weight.copy_(shared_weight(centroids, assignment, keep))
            codes[name] = (layer, centroids, assignment, keep)
        if opts.finetune_epochs > 0:
            self.details["finetune"] = _train_centroids(model, ctx, codes, opts)
        for name, (layer, *_rest) in codes.items():
            layers[name] = _layer_facts(layer.weight.detach())
        self.details.update({"layers": layers, **coded_sizes(model.module, layers)})
        state = model.with_module(model.module)
        if opts.storage == "indices":
            state.onnx_cache = self._index_coded(state, ctx, [f"{n}.weight" for n in codes])
            self.notes.append(
                f"weight sharing: at most {opts.clusters} values per layer, "
                "stored as uint8 indices + codebook in the ONNX file"
            )
        else:
            self.notes.append(
                f"weight sharing: at most {opts.clusters} values per layer "
                "(fp32 file; see index_coded_bytes)"
            )
        return state

    def _index_coded(self, state: ModelState, ctx: StageContext, weights: list[str]):
        """The float export with the clustered weights index-coded; its outputs must equal the
        float export's (same weights, so the same numbers up to onnxruntime's own rounding)."""
        from mcomp.compressors.cluster.storage import index_code
        from mcomp.errors import StageError
        from mcomp.measure.inference import predict_batch
        from mcomp.model.convert import torch_to_onnx

        exported = torch_to_onnx(state)
        coded, facts = index_code(exported, names=set(weights) or None)
        if not facts:  # the exporter renamed the weights: fall back to every few-valued tensor
            coded, facts = index_code(exported)
        sample = {k: v[:32] for k, v in ctx.datasets.eval.inputs.items()}
        float_out = predict_batch(state.with_onnx(exported), sample, threads=ctx.threads)
        coded_out = predict_batch(state.with_onnx(coded), sample, threads=ctx.threads)
        diff = max(
            float(np.max(np.abs(a - b))) if a.size else 0.0
            for a, b in zip(float_out, coded_out, strict=True)
        )
        if diff > 1e-6:
            raise StageError(
                f"cluster: the index-coded ONNX model differs from the float one by "
                f"{diff:.3g}; use `storage: float` and report the model"
            )
        self.details["storage"] = {
            "format": "uint8 index + fp32 codebook (Cast, Gather)",
            "tensors": facts,
            "max_abs_diff_vs_float": diff,
            "float_bytes": exported.ByteSize(),
            "index_coded_bytes": coded.ByteSize(),
        }
        return coded

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


def cluster_weights(weight, clusters: int, *, init: str, iterations: int, seed: int):
    """k-means of a weight tensor's non-zero values; zeros are their own cluster.

    Returns (centroids, assignment, keep): `assignment` has the weight's shape and indexes
    `centroids`; `keep` is False where the weight is exactly zero.
    """
    import torch

    keep = weight != 0
    values = weight[keep].double()
    k = clusters - 1 if bool((~keep).any()) else clusters
    centroids = torch.zeros(1, dtype=torch.float64)
    assignment = torch.zeros(weight.shape, dtype=torch.long)
    if values.numel():
        centroids, members = kmeans_1d(values, k, init=init, iterations=iterations, seed=seed)
        assignment[keep] = members
    return centroids.to(weight.dtype), assignment, keep


def kmeans_1d(values, k: int, *, init: str, iterations: int, seed: int):
    """Lloyd's k-means on scalars; returns (sorted centroids, member index per value)."""
    import torch

    unique = torch.unique(values)
    if unique.numel() <= k:  # already few enough values: share them exactly
        return unique, torch.searchsorted(unique, values)
    centroids = _initial_centroids(values, k, init, seed)
    members = None
    for _ in range(iterations):
        new = _nearest(centroids, values)
        if members is not None and torch.equal(new, members):
            break
        members = new
        sums = torch.zeros(k, dtype=values.dtype).index_add_(0, members, values)
        counts = torch.bincount(members, minlength=k)
        centroids, _ = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), centroids))
    return centroids, _nearest(centroids, values)


def _nearest(sorted_centroids, values):
    # In 1-D the nearest centroid is found by the midpoints between sorted centroids.
    import torch

    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.searchsorted(midpoints.contiguous(), values.contiguous())


def _initial_centroids(values, k: int, init: str, seed: int):
    import numpy as np
    import torch

    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=values.dtype)
    # k-means++ (Arthur & Vassilvitskii 2007) on a seeded sample of at most 20k values.
    rng = np.random.default_rng(seed)
    data = values.numpy()
    if data.size > 20000:
        data = rng.choice(data, 20000, replace=False)
    chosen = [data[rng.integers(data.size)]]
    distance = (data - chosen[0]) ** 2
    for _ in range(1, k):
        total = distance.sum()
        pick = rng.choice(data.size, p=distance / total) if total > 0 else rng.integers(data.size)
        chosen.append(data[pick])
        distance = np.minimum(distance, (data - chosen[-1]) ** 2)
    return torch.sort(torch.tensor(np.array(chosen), dtype=values.dtype))[0]


def shared_weight(centroids, assignment, keep):
    """The weight tensor the codebook encodes: centroids[assignment], exactly 0 where not kept."""
    import torch

    return torch.where(keep, centroids[assignment], torch.zeros((), dtype=centroids.dtype))


def _train_centroids(model: ModelState, ctx: StageContext, codes: dict, opts) -> dict:
    """Train the centroids with weights reparametrised as centroids[index] (shared gradients)."""
    from torch.nn.utils import parametrize

    from mcomp.training.loop import TrainConfig, train_module, training_facts
    from mcomp.training.masks import training_masks

    for layer, centroids, assignment, keep in codes.values():
        parametrize.register_parametrization(
            layer, "weight", _shared_weights_class()(centroids, assignment, keep)
        )
    try:
        # Masks for layers not clustered; clustered zeros are structural (`keep`).
        masks = training_masks(model.module, ctx.facts.masks)
        config = TrainConfig(epochs=opts.finetune_epochs, lr=opts.lr, batch_size=ctx.batch_size)
        result = train_module(model, ctx, config, masks=masks, label="cluster finetune")
    finally:
        for layer, *_ in codes.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return training_facts(result)


def _shared_weights_class():
    """The parametrisation module; built in a function so importing this file needs no torch."""
    import torch

    class _SharedWeights(torch.nn.Module):
        """weight = centroids[index] (0 where pruned); the original tensor is ignored."""

        def __init__(self, centroids, assignment, keep) -> None:
            super().__init__()
            self.centroids = torch.nn.Parameter(centroids.clone())
            self.register_buffer("index", assignment.clone())
            self.register_buffer("keep", keep.clone())

        def forward(self, _original):
            return shared_weight(self.centroids, self.index, self.keep)

    return _SharedWeights


def _layer_facts(weight) -> dict[str, int]:
    import torch

    distinct = int(torch.unique(weight).numel())
    return {
        "clusters": distinct,
        "weights": weight.numel(),
        "zeros": int((weight == 0).sum()),
        "index_bits": max(1, math.ceil(math.log2(distinct))),
    }


def coded_sizes(module, layers: dict[str, dict]) -> dict[str, int]:
    """Bytes with log2(k)-bit indices + fp32 codebook per clustered layer, fp32 elsewhere."""
    coded = sum(
        math.ceil(f["weights"] * f["index_bits"] / 8) + 4 * f["clusters"] for f in layers.values()
    )
    clustered = sum(f["weights"] for f in layers.values())
    total = sum(p.numel() for p in module.parameters())
    return {"index_coded_bytes": coded + 4 * (total - clustered), "fp32_bytes": 4 * total}
