"""The quantize stage's work as one plain function: `quantize_model`.

    fp32 ONNX ─ pre-process ─ mode ─ nodes left float ─ quantize_once ─ [fallback] ─ prove
                (ORT)         (auto)  (exclude_*, attention)  (ORT + auto calibration)

The `quantize` stage and the `qat` stage (with its learned ranges) both call it; the pieces
it calls are plain functions too, none of which knows a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.compressors.quantize.auto_calibration import quantize_once
from mcomp.compressors.quantize.fallback import accuracy_goal, fallback_search
from mcomp.compressors.quantize.graph_rewrites import rewrite_for_int8
from mcomp.compressors.quantize.options import QuantizeOptions
from mcomp.compressors.quantize.ort_quantize import (
    QUANTIZED_OPS,
    PreparedModel,
    QuantizedModel,
)
from mcomp.compressors.quantize.prepare import (
    attention_nodes,
    compact_names,
    pack_initializers,
    preprocess,
    unshare_weights,
    upgrade_opset,
)
from mcomp.compressors.quantize.selection import excluded_nodes, resolve_mode, resolve_types
from mcomp.compressors.quantize.statistics import StatisticsCache
from mcomp.compressors.quantize.transformer_fusion import (
    fusable,
    fuse_transformer,
    fusion_notes,
)
from mcomp.errors import StageError
from mcomp.measure.onnx_macs import sample_shapes

if TYPE_CHECKING:
    import onnx

    from mcomp.model.state import ModelState
    from mcomp.stage import QatRange, StageContext


@dataclass
class QuantizeResult:
    """The quantized model with the stage's report details and notes."""

    model: onnx.ModelProto
    details: dict[str, Any]
    notes: list[str]


def quantize_model(
    model: ModelState,
    options: QuantizeOptions,
    ctx: StageContext,
    *,
    learned: dict[str, QatRange] | None = None,
    warned: set[str] | None = None,
) -> QuantizeResult:
    """Quantize `model` (an ONNX state) as `options` say.

    `learned`: activation ranges from quantization-aware training, applied as onnxruntime
    tensor overrides (static mode). `warned`: exclude patterns already warned about."""
    import time

    import onnx

    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    # where the stage's time went, phase by phase, to the millisecond (a small model's take a few)
    def lap(phase: str) -> None:
        now = time.perf_counter()
        seconds[phase] = round(seconds.get(phase, 0.0) + now - clock[0], 3)
        clock[0] = now

    folder = ctx.workdir / "quantize"
    folder.mkdir(exist_ok=True)
    source = folder / "fp32.onnx"
    onnx.save(upgrade_opset(model.onnx_model), source)
    prepared_path = preprocess(source, folder / "prepared.onnx", ctx)
    if prepared_path != source:  # the scratch folder keeps only what is read again
        source.unlink(missing_ok=True)
    prepared = onnx.load(str(prepared_path))
    if unshare_weights(prepared):  # after pre-processing, which may fold tensors together
        onnx.save(prepared, prepared_path)
    mode, why = resolve_mode(prepared, options.mode, sample_shapes(model.inputs, ctx.datasets))
    requested, options = options, resolve_types(options, prepared)
    if mode == "weight4":
        return _quantize_weight4(model, prepared, options, ctx, folder)
    details: dict[str, Any] = {}
    lap("prepare")
    if options.transformer_fusion is True or (
        options.transformer_fusion == "auto" and fusable(prepared, mode)
    ):
        prepared, details["transformer_fusion"] = fuse_transformer(prepared, mode=mode, ctx=ctx)
        if details["transformer_fusion"]["applied"]:
            onnx.save(prepared, prepared_path)
        lap("transformer_fusion")
    excluded = excluded_nodes(prepared, options, ctx.progress, set() if warned is None else warned)
    if mode == "static" and options.float_attention:
        attention = attention_nodes(prepared) - excluded
        excluded |= attention
        if attention:
            details["float_attention_nodes"] = len(attention)
    prepared, rewrites = rewrite_for_int8(
        prepared,
        prepared_path,
        options,
        mode=mode,
        excluded=excluded,
        ctx=ctx,
        learned=bool(learned),
    )
    details.update(rewrites)
    lap("rewrites")
    shared = PreparedModel(
        prepared_path,
        StatisticsCache(
            prepared_path, ctx, options.calibration.samples, options.calibration.percentile
        ),
        _learned_overrides(prepared, learned, mode, ctx, details),
    )
    first = quantize_once(
        shared, folder / "int8.onnx", options, mode=mode, excluded=excluded, ctx=ctx
    )
    lap("first_quantization")
    if first.float_outputs is not None:
        details["float_outputs"] = first.float_outputs
    details.update(
        mode=mode,
        format=options.format if mode == "static" else "dynamic",
        activation_type=options.activation_type,
        weight_type=options.weight_type,
        reduce_range=options.reduce_range,
        per_channel=options.per_channel,
        symmetric_weights=options.symmetric_weights,
    )
    if requested.weight_type == "auto":
        details["weight_type_requested"] = "auto"
    chosen, notes = first, []
    goal = accuracy_goal(model, options, ctx)
    if goal is not None and options.fallback.enabled:
        found = fallback_search(
            shared,
            first=first,
            options=options,
            excluded=excluded,
            state=model,
            goal=goal,
            ctx=ctx,
            mode=mode,
        )
        chosen, excluded, notes = found.chosen, found.excluded, found.notes
        details["fallback"] = found.facts
        # the chosen model's settings, not the first trial's
        details["per_channel"] = chosen.options.per_channel
        if chosen.float_outputs is not None:
            details["float_outputs"] = chosen.float_outputs
        lap("fallback")
    details["excluded_nodes"] = sorted(excluded)
    notes += fusion_notes(details.get("transformer_fusion"), explicit=options.transformer_fusion)
    if options.mode == "auto":
        details["mode_requested"] = "auto"
        notes.append(f"mode auto: {mode} ({why})")
    notes += _finish(model, chosen, prepared, ctx, folder, options, details, QUANTIZED_OPS)
    lap("checks")
    # statistics are collected once, by whichever phase first needs them
    seconds["statistics"] = round(shared.statistics.seconds, 3)
    details["seconds"] = seconds
    return QuantizeResult(chosen.model, details, notes)


def _quantize_weight4(model, prepared, options: QuantizeOptions, ctx, folder: Path):
    from mcomp.compressors.quantize.lowbit import quantize_weight4

    quantized = quantize_weight4(prepared, options.weight4, folder)
    details = {"mode": "weight4", "bits": 4, **options.weight4.model_dump()}
    result = QuantizedModel(quantized, options)
    notes = _finish(
        model, result, prepared, ctx, folder, options, details, QUANTIZED_OPS | {"MatMulNBits"}
    )
    return QuantizeResult(quantized, details, notes)


def _learned_overrides(prepared, learned, mode: str, ctx: StageContext, details: dict) -> dict:
    """onnxruntime tensor overrides from QAT's learned ranges (static mode only)."""
    if not learned:
        return {}
    if mode != "static":
        ctx.progress.warn(f"quantize: QAT ranges apply to static mode only, not {mode}")
        return {}
    from mcomp.compressors.quantize.learned_ranges import tensor_overrides

    overrides, facts = tensor_overrides(prepared, learned)
    details["qat"] = facts
    if facts["unmapped"]:
        ctx.progress.warn(
            f"quantize: no ONNX node found for the QAT ranges of "
            f"{facts['unmapped']}; they are calibrated instead"
        )
    return overrides


def _finish(
    model: ModelState,
    chosen: QuantizedModel,
    prepared,
    ctx: StageContext,
    folder: Path,
    options: QuantizeOptions,
    details: dict[str, Any],
    ops: set[str],
) -> list[str]:
    """Pack the result, count its quantized nodes, prove what runs in int8; the notes."""
    from mcomp.compressors.quantize.int8_check import prove_int8

    quantized = chosen.model
    pack_initializers(quantized)
    fp32_names = {n.name for n in prepared.graph.node} | {
        name for n in prepared.graph.node for name in (*n.input, *n.output)
    }
    details["names_compacted_bytes"] = compact_names(quantized, fp32_names)
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        if node.op_type in ops:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        raise StageError(
            "quantize: onnxruntime quantized no node of this model; check "
            "`op_types`/`exclude_nodes`/`exclude_op_types`"
        )
    details["int8_nodes"] = counts
    if chosen.calibration:
        details["calibration"] = chosen.calibration
    if chosen.bias_correction is not None:
        details["bias_correction"] = chosen.bias_correction
    return prove_int8(
        model.onnx_model,
        quantized,
        [quantized, prepared],
        ctx,
        folder,
        options,
        details,
        input_shapes=sample_shapes(model.inputs, ctx.datasets),
    )
