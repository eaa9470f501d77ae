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

import numpy as np

from mcomp.compressors.quantize.calibration_reader import graph_inputs
from mcomp.compressors.quantize.int8_check import float_outputs, relative_output_error
from mcomp.compressors.quantize.options import QuantizeOptions
from mcomp.errors import StageError
from mcomp.model.state import ModelState
from mcomp.stage import StageContext

AUTO_METHODS = ("minmax", "percentile")
SCORING_SAMPLES = 64


def quantize_auto(
    stage,
    prepared_path: Path,
    target: Path,
    model: ModelState,
    excluded: set[str],
    ctx: StageContext,
    options: QuantizeOptions,
):
    """(the chosen quantized model, the chosen method or None, output error per method).

    `stage` is the QuantizeStage; its `quantize_once` runs each explicit method. A method
    whose quantization fails after another succeeded is skipped; a model with nothing
    quantized is returned at once (the stage reports that as an error)."""
    from mcomp.compressors.quantize.stage import QUANTIZED_OPS

    errors: dict[str, float] = {}
    models = {}
    feed = reference = None  # the fp32 outputs, computed once
    for method in AUTO_METHODS:
        calibration = options.calibration.model_copy(update={"method": method})
        try:
            candidate = stage.quantize_once(
                prepared_path,
                target.with_name(f"{target.stem}.{method}.onnx"),
                model,
                excluded,
                ctx,
                options=options.model_copy(update={"calibration": calibration}),
                mode="static",
            )
        except StageError:
            if not models:
                raise
            break  # keep what the first method gave
        if not any(node.op_type in QUANTIZED_OPS for node in candidate.graph.node):
            return candidate, None, {}
        models[method] = candidate
        if reference is None:  # the calibration reader has checked the split's inputs by now
            names = [value.name for value in graph_inputs(candidate)]
            feed = {name: ctx.datasets.calibration.inputs[name][:SCORING_SAMPLES] for name in names}
            reference = float_outputs(prepared_path.read_bytes(), feed, ctx.threads)
        errors[method] = relative_output_error(
            reference, candidate.SerializeToString(), feed, ctx.threads
        )
    chosen = min(errors, key=lambda m: (not np.isfinite(errors[m]), errors[m]))
    return models[chosen], chosen, {m: round(float(e), 6) for m, e in errors.items()}
