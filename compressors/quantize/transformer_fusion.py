"""onnxruntime's transformer fusions on the fp32 graph, before int8.

`onnxruntime.transformers.optimizer` rewrites the subgraphs an exporter leaves for GELU
(Erf), bias + GELU and attention into single contrib ops. quantize's pre-processing
(`quant_pre_process`) runs only onnxruntime's basic graph optimisations, which do none of
this, and once the quantizer has put Quantize/DequantizeLinear pairs and int8 MatMuls between
those ops, the session can no longer fuse them either. Fusing first keeps each bias + GELU
one float kernel next to the int8 MatMuls, and an `Attention` node is what dynamic mode
turns into int8 `QAttention` (onnxruntime has no QDQ form of it, so static mode leaves
attention unfused: its query/key/value projections would otherwise stay float).

Measured on a 6-layer, 384-wide BERT (22.7 M parameters, sequences of 128, one thread,
transformers 5.24, torch 2.13's exporter; docs/quantization.md): bias + GELU fusion made
dynamic int8 faster at batch 16 (2.06x fp32 instead of 1.84x) with the same output error;
SkipLayerNormalization made dynamic int8 slower at batch 1 (2.19x vs 2.61x), so it stays
off, and LayerNorm fusion is left to the session (it fuses those subgraphs itself, int8 or
not). Attention fused on none of that model's exports (onnxruntime's patterns expect the
older mask arithmetic), so QAttention is used only where the graph matches.

The fusions must not change the fp32 function: the fused model's outputs are compared with
the unfused model's on calibration samples and the fusion is dropped, saying so, when any
output moves by more than `TOLERANCE` of its largest magnitude.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

    from mcomp.stage import StageContext

TOLERANCE = 1e-4  # of each output's largest magnitude: float rounding, not a new function
CHECK_SAMPLES = 8
FUSED_OP_TYPES = (
    "Attention",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "SkipLayerNormalization",
)


def fusable(model: onnx.ModelProto, mode: str) -> bool:
    """Whether the graph holds what the fusions of `mode` look for: Erf (GELU), Tanh with
    Pow (tanh GELU) or, in dynamic mode only (the one that fuses attention), Softmax with
    MatMul. Elsewhere (CNNs; attention-only graphs in static mode, where the optimizer's
    1.5 s pass over the PP-OCR recogniser matched nothing) the pass is skipped."""
    ops = {node.op_type for node in model.graph.node}
    patterns = [{"Erf"}, {"Tanh", "Pow"}]
    if mode == "dynamic":
        patterns.append({"Softmax", "MatMul"})
    return any(pattern <= ops for pattern in patterns)


def fuse_transformer(
    model: onnx.ModelProto, *, mode: str, ctx: StageContext
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`model` with onnxruntime's fusions and the report facts: which ops were fused, how
    far the fp32 outputs moved. The model comes back unchanged (with the reason in the facts)
    when nothing fused, the optimizer failed, or the outputs moved."""
    feed = check_feed(model, ctx)
    if feed is None:
        return model, {"applied": False, "why": "no inputs to check the fp32 function on"}
    try:
        fused = _optimize(model, attention=mode == "dynamic")
    except Exception as exc:  # the optimizer's own pattern code; the graph stays as it was
        return model, {"applied": False, "why": f"onnxruntime's optimizer failed: {exc}"[:200]}
    before = collections.Counter(node.op_type for node in model.graph.node)
    after = collections.Counter(node.op_type for node in fused.graph.node)
    counts = {op: after[op] - before[op] for op in FUSED_OP_TYPES if after[op] > before[op]}
    if not counts:
        return model, {"applied": False, "why": "no subgraph matched a fusion"}
    moved = _output_change(model, fused, feed, ctx.threads)
    facts: dict[str, Any] = {"fused": counts, "max_output_change": float(f"{moved:.3g}")}
    if not moved <= TOLERANCE:  # NaN included
        return model, {"applied": False, "why": "the fused fp32 outputs moved", **facts}
    return fused, {"applied": True, **facts}


def fusion_notes(facts: dict[str, Any] | None, *, explicit: bool | str) -> list[str]:
    """The report's line: what was fused, or (when the recipe asked for it) why not."""
    if facts is None:
        return []
    if facts["applied"]:
        fused = ", ".join(f"{count} {op}" for op, count in facts["fused"].items())
        return [
            f"transformer fusion: {fused} (onnxruntime's optimizer; fp32 outputs moved by at most "
            f"{facts['max_output_change']:.1g} of their largest value)"
        ]
    if explicit is True or "fused" in facts:  # asked for, or fused but the outputs moved
        return [f"transformer fusion not applied: {facts['why']}"]
    return []


def _optimize(model: onnx.ModelProto, *, attention: bool) -> onnx.ModelProto:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from mcomp.compressors.quantize.graph_rewrites import copy_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False  # slower int8 at batch 1 (the module's docstring)
    options.enable_bias_skip_layer_norm = False
    options.enable_embed_layer_norm = False  # rewrites the inputs' mask into a mask index
    # the session fuses LayerNorm subgraphs itself, int8 or not (the quantizer puts nothing
    # inside them); fused beforehand on the PP-OCR recogniser, int8 ran the same at batch 1
    # and 1-4 % slower at batch 8
    options.enable_layer_norm = False
    options.enable_gelu_approximation = False  # tanh GELU: a different function
    options.enable_attention = attention
    options.enable_rotary_embeddings = False
    options.enable_qordered_matmul = False
    # the optimizer reports unmatched patterns and a producer it does not know through
    # logging and print; neither may reach the user's stdout (`--json`)
    loggers = [logging.getLogger(name) for name in ("onnxruntime.transformers", "onnx_model")]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    root_level = root.level
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        root.setLevel(logging.CRITICAL)
        with contextlib.redirect_stdout(io.StringIO()):
            optimized = optimizer.optimize_model(
                copy_model(model), model_type="bert", optimization_options=options, opt_level=0
            )
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        root.setLevel(root_level)
    return optimized.model


def _output_change(model, fused, feed: dict[str, np.ndarray], threads: int) -> float:
    """Largest change of any float output, relative to that output's largest magnitude."""
    from mcomp.compressors.quantize.int8_check import float_outputs

    reference = float_outputs(model.SerializeToString(), feed, threads)
    candidate = float_outputs(fused.SerializeToString(), feed, threads)
    worst = 0.0
    for a, b in zip(reference, candidate, strict=True):
        if a is None or a.size == 0:
            continue
        scale = max(float(np.abs(a).max()), 1e-12)
        change = float(np.abs(a - b).max()) / scale
        if not np.isfinite(change):
            return float("inf")
        worst = max(worst, change)
    return worst


def check_feed(model, ctx: StageContext) -> dict[str, np.ndarray] | None:
    """Up to `CHECK_SAMPLES` inputs to compare the fp32 functions on: calibration's, else
    train's, else eval's (a check that the function did not change, not a fit, so any split
    will do); None when no split names every graph input."""
    from mcomp.compressors.quantize.calibration_reader import graph_inputs

    names = [value.name for value in graph_inputs(model)]
    datasets = ctx.datasets
    for split in (datasets.calibration, datasets.train, datasets.eval):
        if split is not None and all(name in split.inputs for name in names):
            return {name: split.inputs[name][:CHECK_SAMPLES] for name in names}
    return None
