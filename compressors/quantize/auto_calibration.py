"""`calibration.method: auto`: quantize with each of minmax and percentile calibration and keep
the model whose outputs are closest to the fp32 model's.

Neither method wins everywhere (bench_int8.py: percentile 99.999 had 12 % less output error
than minmax on ResNet-18, minmax less on the digits CNN), and one static quantization is cheap
next to the rest of a run (ResNet-18: 7-8 s), so measuring beats guessing. The measure is the
relative L2 error of all float outputs on up to 64 calibration samples; the eval split is not
used, since choosing on it would leak it into the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcomp.compressors.quantize.calibration_reader import graph_inputs
from mcomp.compressors.quantize.int8_check import float_outputs, relative_output_error
from mcomp.compressors.quantize.options import QuantizeOptions
from mcomp.compressors.quantize.ort_quantize import (
    QUANTIZED_OPS,
    PreparedModel,
    QuantizedModel,
    quantize_with_onnxruntime,
)
from mcomp.compressors.quantize.statistics import REFERENCE_SAMPLES
from mcomp.errors import StageError

if TYPE_CHECKING:
    from mcomp.stage import StageContext

# the fp32 outputs of these are kept by the statistics pass (statistics.REFERENCE_SAMPLES)
SCORING_SAMPLES = REFERENCE_SAMPLES


def quantize_once(
    prepared: PreparedModel,
    target: Path,
    options: QuantizeOptions,
    *,
    mode: str,
    excluded: set[str],
    ctx: StageContext,
) -> QuantizedModel:
    """One quantization of the prepared model with `options`, `calibration.method: auto`
    decided by output error (what the stage, the fallback and QAT all call)."""
    if mode == "static" and options.calibration.method == "auto":
        return quantize_auto(prepared, target, options, excluded=excluded, ctx=ctx)
    return quantize_with_onnxruntime(
        prepared, target, options, mode=mode, excluded=excluded, ctx=ctx
    )


def quantize_auto(
    prepared: PreparedModel,
    target: Path,
    options: QuantizeOptions,
    *,
    excluded: set[str],
    ctx: StageContext,
) -> QuantizedModel:
    """Static quantization with each of `calibration.candidates`; the one closest to fp32.

    A method whose quantization fails after another succeeded is skipped; a model with
    nothing quantized is returned at once (the stage reports that as an error)."""
    errors: dict[str, float] = {}
    models: dict[str, QuantizedModel] = {}
    feed = reference = None  # the fp32 outputs, computed once
    for method in options.calibration.candidates:
        calibration = options.calibration.model_copy(update={"method": method})
        try:
            candidate = quantize_with_onnxruntime(
                prepared,
                target.with_name(f"{target.stem}.{method}.onnx"),
                options.model_copy(update={"calibration": calibration}),
                mode="static",
                excluded=excluded,
                ctx=ctx,
            )
        except StageError:
            if not models:
                raise
            break  # keep what the first method gave
        if not any(node.op_type in QUANTIZED_OPS for node in candidate.model.graph.node):
            return candidate
        models[method] = candidate
        if reference is None:  # the calibration reader has checked the split's inputs by now
            names = [value.name for value in graph_inputs(candidate.model)]
            feed = {name: ctx.datasets.calibration.inputs[name][:SCORING_SAMPLES] for name in names}
            samples = len(next(iter(feed.values())))
            # kept from the statistics pass (same model, same first samples): no fp32 run
            reference = prepared.statistics.reference_outputs(samples)
            if reference is None:
                reference = float_outputs(prepared.path.read_bytes(), feed, ctx.threads)
        errors[method] = relative_output_error(
            reference, candidate.model.SerializeToString(), feed, ctx.threads
        )
    chosen = min(errors, key=lambda m: (not np.isfinite(errors[m]), errors[m]))
    result = models[chosen]
    result.runners_up = {m: model for m, model in models.items() if m != chosen}
    result.calibration = {
        **(result.calibration or {}),
        "method": chosen,
        "requested": "auto",
        "output_error": {m: round(float(e), 6) for m, e in errors.items()},
    }
    # the result's options name the method auto chose (the chosen candidate's own options),
    # so a fallback trial built from them repeats that choice instead of deciding again
    return result
