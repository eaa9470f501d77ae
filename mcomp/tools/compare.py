"""`mcomp compare A B`: two models side by side — size, parameters, MACs, latency measured in
one run, the task metric, and how closely B's outputs follow A's. Ratios are B / A."""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcomp.data.load import Split
from mcomp.errors import MCompError
from mcomp.model.open import (
    ModelRef,
    describe_signature,
    open_model,
    same_signature,
    select_output,
)
from mcomp.model.state import ModelKind, ModelState

AGREEMENT_SAMPLES = 64  # random samples compared when no --data is given


@dataclass
class CompareOptions:
    """How to time and score the pair."""

    threads: int = 1
    batch: int = 1
    rounds: int = 3
    warmup: int = 3
    runs: int = 20
    metric: str = "auto"  # accuracy for integer labels, mse for float ones


def compare_models(
    ref_a: ModelRef, ref_b: ModelRef, split: Split | None, options: CompareOptions
) -> dict[str, Any]:
    """Every figure of A and B with the ratio B / A (< 1: B is smaller or faster)."""
    from mcomp.data.open import fit_split, random_inputs
    from mcomp.run.memory import check_batch_fits

    a, b = open_model(ref_a, options.threads), open_model(ref_b, options.threads)
    _check_signatures(a, b)
    split_a = fit_split(a, split, options.threads) if split is not None else None
    split_b = fit_split(b, split, options.threads) if split is not None else None
    _check_signatures(a, b)
    if not a.inputs:
        raise MCompError(
            "compare: the input shape of the models is unknown; pass --data or --input-shape"
        )
    feeds = [
        s.inputs if s is not None else random_inputs(m, AGREEMENT_SAMPLES)
        for m, s in ((a, split_a), (b, split_b))
    ]
    for model, ref, feed in ((a, ref_a, feeds[0]), (b, ref_b, feeds[1])):
        select_output(model, ref, feed)
    for feed in feeds:
        check_batch_fits(options.batch, feed, "--batch")
    figures = {**_static_figures(a, b), **_latency(a, b, feeds, options)}
    metric_name = None
    if split is not None and split.labels is not None:
        scored = [_metric(m, s, options) for m, s in ((a, split_a), (b, split_b))]
        figures["metric"] = _pair(scored[0]["metric"], scored[1]["metric"])
        metric_name = scored[0]["metric_name"]
    return {
        "a": a.source,
        "b": b.source,
        "inputs": [i.model_dump() for i in a.inputs],
        "threads": options.threads,
        "metric_name": metric_name,
        "figures": figures,
        "agreement": _agreement(a, b, feeds, options),
        "samples": "data" if split is not None else f"{AGREEMENT_SAMPLES} random",
    }


def _check_signatures(a: ModelState, b: ModelState) -> None:
    if a.inputs and b.inputs and not same_signature(a.inputs, b.inputs):
        raise MCompError(
            f"compare: the models take different inputs: A {a.source} takes "
            f"{describe_signature(a.inputs)}, B {b.source} takes "
            f"{describe_signature(b.inputs)}"
        )


def _pair(value_a: float | None, value_b: float | None) -> dict[str, Any]:
    ratio = round(value_b / value_a, 4) if value_a and value_b is not None else None
    return {"a": value_a, "b": value_b, "ratio_b_over_a": ratio}


def _static_figures(a: ModelState, b: ModelState) -> dict[str, Any]:
    from mcomp.measure.figures import onnx_form
    from mcomp.measure.onnx_macs import count_onnx_macs

    def facts(state: ModelState) -> dict[str, int]:
        raw = onnx_form(state).SerializeToString()
        params, nonzero = _params(state)
        return {
            "size_bytes": len(raw),
            "size_compressed_bytes": len(zlib.compress(raw, 9)),
            "params": params,
            "nonzero_params": nonzero,
            "macs": count_onnx_macs(onnx_form(state)),
        }

    fa, fb = facts(a), facts(b)
    return {key: _pair(fa[key], fb[key]) for key in fa}


def _params(state: ModelState) -> tuple[int, int]:
    from mcomp.measure.figures import onnx_params

    if state.kind == ModelKind.ONNX:
        return onnx_params(state.onnx_model)
    import torch

    tensors = list(state.module.parameters())
    return (sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors))


def _latency(
    a: ModelState, b: ModelState, feeds: list[dict[str, np.ndarray]], options: CompareOptions
) -> dict[str, Any]:
    """onnxruntime latency at `batch`: A and B alternate for `rounds` rounds, each timed in its
    own block (interleaving single calls inflates both), and the medians are compared."""
    from mcomp.measure.figures import onnx_form
    from mcomp.measure.ort_session import batch_feed, create_session, time_session

    sessions = [
        create_session(onnx_form(m).SerializeToString(), options.threads, source=m.source)
        for m in (a, b)
    ]
    batch_feeds = [batch_feed(feed, options.batch) for feed in feeds]
    timings: list[list[float]] = [[], []]
    for _ in range(options.rounds):
        for index in (0, 1):
            timings[index].append(
                time_session(
                    sessions[index], batch_feeds[index], warmup=options.warmup, runs=options.runs
                )
            )
    medians = [round(statistics.median(t), 4) for t in timings]
    return {f"latency_ms_b{options.batch}": _pair(*medians)}


def _outputs(state: ModelState, feed: dict[str, np.ndarray], options: CompareOptions):
    from mcomp.measure.inference import predict_split

    split = Split("compare", feed, None)
    return predict_split(state, split, batch_size=64, threads=options.threads)


def _metric(state: ModelState, split: Split, options: CompareOptions) -> dict[str, Any]:
    from mcomp.tools.eval import evaluate_model

    return evaluate_model(state, split, metric=options.metric, threads=options.threads)


def _agreement(
    a: ModelState, b: ModelState, feeds: list[dict[str, np.ndarray]], options: CompareOptions
) -> dict[str, Any]:
    out_a, out_b = _outputs(a, feeds[0], options), _outputs(b, feeds[1], options)
    if out_a.shape != out_b.shape:
        return {
            "comparable": False,
            "note": f"outputs differ in shape: A {out_a.shape}, B {out_b.shape}",
        }
    from mcomp.measure.metrics import cosine

    diff = np.abs(out_a.astype(np.float64) - out_b)
    result = {
        "comparable": True,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        # what "agreement" means for float outputs (regression, embeddings)
        "cosine": cosine(out_b, None, out_a),
    }
    if out_a.ndim >= 2 and out_a.shape[-1] > 1:
        result["top1_agreement"] = float(np.mean(out_a.argmax(-1) == out_b.argmax(-1)))
    return result
