"""One onnxruntime quantization of the prepared fp32 model, with an explicit calibration
method (static) or none (dynamic), plus the two edits mcomp makes to the result.

Static mode calls `quantize_static` (QDQ or QOperator); every method's activation ranges are
computed by mcomp from its statistics (ranges.py), collected once per stage and shared by
every candidate and trial, and handed over as tensor overrides, so onnxruntime's own
calibration runs on one sample only. Its calibrators would each run the whole split again per
quantization: on the PP-OCR detector its minmax and percentile passes took 160 s of a
quantization (the percentile histograms 116 s), and its entropy calibrator returns minmax's
ranges at its default 128 bins and is a slow Python loop at 2048.
Dynamic mode calls `quantize_dynamic` on MatMul-family ops after rewriting Gemm as
MatMul + Add (onnxruntime's dynamic quantizer skips Gemm); convolutions never, since
ConvInteger ran slower than fp32 on these machines. Afterwards the graph outputs are made
float again (`float_outputs`) and, with `scale: pow2`, every scale is rounded to a power of 2.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcomp.compressors.quantize.calibration_reader import CalibrationReader
from mcomp.compressors.quantize.options import QuantizeOptions, effective_reduce_range
from mcomp.compressors.quantize.prepare import gemm_to_matmul, keep_outputs_float, working_directory
from mcomp.compressors.quantize.statistics import StatisticsCache
from mcomp.errors import StageError

if TYPE_CHECKING:
    import onnx

    from mcomp.stage import StageContext

QUANTIZED_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QGemm",
    "DynamicQuantizeLSTM",
}
# dynamic mode never quantizes Conv: ConvInteger ran slower than fp32 on these machines
DYNAMIC_OP_TYPES = ["MatMul", "Attention", "LSTM", "GRU", "Gather"]


@dataclass
class PreparedModel:
    """The fp32 model every quantization of one stage starts from, and what they share."""

    path: Path  # onnxruntime's pre-processed fp32 model
    statistics: StatisticsCache  # its activation statistics on the calibration split
    overrides: dict = field(default_factory=dict)  # QAT's learned ranges (tensor overrides)
    # onnxruntime's last static QDQ output, the ranges it had and its settings: another
    # calibration method with the same settings rescales it instead (rescale.py)
    last_static: tuple[str, onnx.ModelProto, dict] | None = field(default=None, repr=False)


@dataclass
class QuantizedModel:
    """One quantization of the prepared model, and what it was made with."""

    model: onnx.ModelProto
    options: QuantizeOptions  # as used: `calibration.method: auto` holds the method it chose
    calibration: dict[str, Any] | None = None  # static: method, samples, ...
    float_outputs: list[str] | None = None  # graph outputs made float again (static QDQ)
    bias_correction: dict[str, Any] | None = None  # what bias correction changed
    # `calibration.method: auto`: the candidates it did not keep, by method, so that the
    # fallback tries one without quantizing it again
    runners_up: dict[str, QuantizedModel] = field(default_factory=dict, repr=False)


def quantize_with_onnxruntime(
    prepared: PreparedModel,
    target: Path,
    options: QuantizeOptions,
    *,
    mode: str,
    excluded: set[str],
    ctx: StageContext,
) -> QuantizedModel:
    """Quantize the prepared model into `target` (an explicit calibration method)."""
    import onnx

    # onnxruntime's quantizer writes helper files into the current directory, and its
    # histogram calibrators print progress on stdout, which carries only mcomp's results
    # (mcomp's own progress says "calibrating"): their chatter is dropped.
    calibration = None
    with working_directory(target.parent), contextlib.redirect_stdout(io.StringIO()):
        if mode == "static":
            calibration = _quantize_static(prepared, target, options, excluded, ctx)
            if options.recurrent == "dynamic":
                _quantize_recurrent(target, excluded)
        else:
            _quantize_dynamic(prepared.path, target, excluded, options)
    quantized = onnx.load(str(target))
    # in memory now: a fallback search makes a copy per trial, which the scratch folder
    # need not keep (a large model's copies filled TMPDIR)
    target.unlink(missing_ok=True)
    target.with_suffix(".matmul.onnx").unlink(missing_ok=True)
    restored = corrected = None
    if mode == "static" and options.format == "qdq" and options.bias_correction:
        from mcomp.compressors.quantize.bias_correction import correct_biases

        fp32 = onnx.load(str(prepared.path))
        corrected = correct_biases(quantized, fp32, prepared.statistics.get(histograms=False))
    if mode == "static" and options.format == "qdq" and options.float_outputs:
        restored = keep_outputs_float(quantized)
    if mode == "static" and options.scale == "pow2":
        from mcomp.compressors.quantize.lowbit import round_scales_pow2

        quantized = round_scales_pow2(quantized)
    return QuantizedModel(quantized, options, calibration, restored, corrected)


def reduce_range(options: QuantizeOptions) -> bool:
    """`options.reduce_range` decided for this CPU (`auto`: see `effective_reduce_range`)."""
    import platform

    from mcomp.measure.cpu_features import cpu_features

    return effective_reduce_range(options, cpu_features(), platform.machine())


def _quantize_static(
    prepared: PreparedModel,
    target: Path,
    options: QuantizeOptions,
    excluded: set[str],
    ctx: StageContext,
) -> dict[str, Any]:
    """onnxruntime's quantize_static; returns the calibration facts."""
    import onnx
    from onnxruntime import quantization as q

    source = prepared.path
    calib = options.calibration
    method, facts = calib.method, {}
    fp32 = onnx.load(str(source), load_external_data=False)
    overrides = dict(prepared.overrides)
    from mcomp.compressors.quantize.ranges import (
        HISTOGRAM_METHODS,
        activation_ranges,
        adjust_like_onnxruntime,
        has_tails,
    )
    from mcomp.compressors.quantize.statistics import HISTOGRAM_BINS

    stats = prepared.statistics.get(histograms=method in HISTOGRAM_METHODS)
    if method == "percentile" and not all(has_tails(s, calib.percentile) for s in stats.values()):
        stats = prepared.statistics.get(histograms=True)  # tails too large to keep
    ranges = activation_ranges(
        stats, method, percentile=calib.percentile, symmetric=options.symmetric_activations
    )
    adjust_like_onnxruntime(ranges, fp32, _quantized_nodes(fp32, options, excluded))
    overrides = {**ranges, **overrides}  # QAT's learned ranges win
    # a graph input counts the samples (an LSTM's outputs have time on axis 0)
    counted = [stats[i.name].samples for i in fp32.graph.input if i.name in stats]
    facts = {"samples": max(counted, default=0)}
    if method in HISTOGRAM_METHODS:
        facts["histogram_bins"] = HISTOGRAM_BINS
    if method == "percentile":
        facts["percentile"] = calib.percentile
    extra = {
        "ActivationSymmetric": options.symmetric_activations,
        "WeightSymmetric": options.symmetric_weights,
    }
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    arguments = {
        "quant_format": {"qdq": q.QuantFormat.QDQ, "qoperator": q.QuantFormat.QOperator}[
            options.format
        ],
        "per_channel": options.per_channel,
        "reduce_range": reduce_range(options),
        "activation_type": _qtype(options.activation_type),
        "weight_type": _qtype(options.weight_type),
        "calibrate_method": q.CalibrationMethod.MinMax,
        "op_types_to_quantize": options.op_types or None,
        "nodes_to_exclude": sorted(excluded) or None,
    }
    # the same call but for the ranges: the last one's output, rescaled (rescale.py)
    settings = repr((arguments, {k: v for k, v in extra.items() if k != "TensorQuantOverrides"}))
    if options.format == "qdq" and prepared.last_static and prepared.last_static[0] == settings:
        from mcomp.compressors.quantize.rescale import rescale

        rescaled = rescale(
            prepared.last_static[1],
            prepared.last_static[2],
            overrides,
            fp32,
            activation_type=arguments["activation_type"].tensor_type,
            symmetric=options.symmetric_activations,
            weight_symmetric=options.symmetric_weights,
            reduce_range=arguments["reduce_range"],
        )
        if rescaled is not None:
            onnx.save(rescaled, str(target))
            return {"method": calib.method, **facts, "rescaled": True}
    # every activation has its range already: onnxruntime's own calibration pass is skipped
    # where it takes them as its calibration cache, else it runs on one batch only
    cache = ranges_cache(ranges, target.with_suffix(".ranges.json"))
    done = False
    try:
        if cache is not None:
            try:
                q.quantize_static(
                    str(source), str(target), None, calibration_cache_path=str(cache),
                    extra_options=extra, **arguments,
                )  # fmt: skip
                done = True
            except Exception:  # noqa: BLE001 - retried with onnxruntime's calibration below
                # a tensor onnxruntime quantizes that has no range of ours (a non-finite
                # activation the statistics leave out): as without a cache
                pass
        if not done:
            reader = CalibrationReader(ctx, fp32, 1)
            # collect in chunks of batches: memory flat in the number of samples
            extra["CalibStridedMinMax"] = reader.stride()
            q.quantize_static(str(source), str(target), reader, extra_options=extra, **arguments)
    except Exception as exc:
        raise StageError(
            f"quantize: onnxruntime static quantization failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None
    finally:
        target.with_suffix(".ranges.json").unlink(missing_ok=True)
    ctx.progress.finish()
    if options.format == "qdq" and done:  # ranges of ours throughout: rescalable
        prepared.last_static = (settings, onnx.load(str(target)), overrides)
    return {"method": calib.method, **facts}


def ranges_cache(ranges: dict[str, list[dict]], target: Path) -> Path | None:
    """`ranges` (TensorQuantOverrides of every float activation) written as onnxruntime's
    calibration cache at `target`, so that `quantize_static` skips its own calibration pass
    (an augmented copy of the model, a session and a batch: 1-2 s of each quantization of
    the PP-OCR models, for ranges the overrides replace anyway). None where onnxruntime's
    `quantize_static` takes no cache (older versions)."""
    import inspect

    from onnxruntime import quantization as q
    from onnxruntime.quantization import calibrate

    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        return None
    data = {
        name: calibrate.TensorData(
            lowest=np.float32(entry[0]["rmin"]), highest=np.float32(entry[0]["rmax"])
        )
        for name, entry in ranges.items()
    }
    calibrate.save_tensors_data(calibrate.TensorsData(q.CalibrationMethod.MinMax, data), target)
    return target


def _quantized_nodes(model, options: QuantizeOptions, excluded: set[str]) -> set[str]:
    """The nodes onnxruntime's static quantizer will quantize (its `should_quantize_node`):
    of an op type it quantizes (`op_types`, else both its static registries, as
    `quantize_static` defaults to for either format), not excluded."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    types = set(options.op_types or [*QDQRegistry, *QLinearOpsRegistry])
    return {
        node.name
        for node in model.graph.node
        if node.op_type in types and node.name not in excluded
    }


def _quantize_dynamic(
    source: Path, target: Path, excluded: set[str], options: QuantizeOptions
) -> None:
    import onnx
    from onnxruntime import quantization as q

    # ORT's dynamic quantizer handles MatMul but not Gemm (what Linear exports to).
    model = gemm_to_matmul(onnx.load(str(source)))
    source = target.with_suffix(".matmul.onnx")  # the prepared model stays as it was
    onnx.save(model, source)
    # a Gemm excluded by name or type lives on as its MatMul (see gemm_to_matmul)
    excluded = excluded | {name + "_matmul" for name in excluded}
    try:
        q.quantize_dynamic(
            str(source),
            str(target),
            per_channel=options.per_channel,
            reduce_range=reduce_range(options),
            weight_type=_qtype(options.weight_type),
            op_types_to_quantize=options.op_types or DYNAMIC_OP_TYPES,
            nodes_to_exclude=sorted(excluded) or None,
            extra_options={"WeightSymmetric": options.symmetric_weights},
        )
    except Exception as exc:
        raise StageError(
            f"quantize: onnxruntime dynamic quantization failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None


def _quantize_recurrent(target: Path, excluded: set[str]) -> None:
    """The LSTM layers of a static model as DynamicQuantizeLSTM (int8 weights, activations
    quantized per batch), in place: static QDQ has no int8 LSTM, and left in float they
    kept a conv + BiLSTM recogniser at 0.67x of its fp32 size (0.25x with them int8)."""
    import onnx
    from onnxruntime import quantization as q

    lstms = [n.name for n in onnx.load(str(target)).graph.node if n.op_type == "LSTM"]
    if not [name for name in lstms if name not in excluded]:
        return
    # per-tensor weights: per-channel was no closer to fp32 on the recogniser (0.898 vs
    # 0.910 line agreement, within noise) and adds scales
    root = logging.getLogger()
    level = root.level
    # its "check if the model is already quantized" warning goes to stderr: it is
    root.setLevel(logging.ERROR)
    try:
        q.quantize_dynamic(
            str(target),
            str(target),
            op_types_to_quantize=["LSTM"],
            nodes_to_exclude=sorted(excluded) or None,
            weight_type=q.QuantType.QInt8,
            per_channel=False,
        )
    except Exception as exc:
        raise StageError(
            f"quantize: onnxruntime dynamic quantization of the LSTM layers failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]} (`recurrent: float` "
            "leaves them in float)"
        ) from None
    finally:
        root.setLevel(level)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8
