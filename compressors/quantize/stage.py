"""int8 quantization with `onnxruntime.quantization`: static (calibrated) or dynamic.

    - quantize:
        mode: static              # static | dynamic | auto (static for conv nets, dynamic
                                  #   when MatMul/Gemm carry most MACs)
        format: qdq               # qdq | qoperator (QLinearConv, QLinearMatMul, ...)
        per_channel: true
        float_outputs: true       # no Q/DQ in front of graph outputs (logits stay float)
        float_attention: true     # Softmax and activation x activation MatMuls stay float
        activation_type: uint8    # uint8 | int8
        weight_type: int8         # int8 | uint8
        reduce_range: auto        # true | false | auto: 7-bit weights for U8S8 on x86 CPUs
                                  #   without VNNI/AMX (saturation), else full int8
        symmetric_activations: false
        symmetric_weights: false
        calibration: {method: auto, percentile: 99.999, samples: null}  # auto: minmax or
                                  #   percentile, whichever is closer to fp32
        exclude_nodes: []         # glob patterns over ONNX node names left in float
        exclude_op_types: []      # op types left in float, e.g. [Gemm]

Defaults were chosen by measurement, not by the docs: on AVX-512 VNNI / AMX CPUs with
onnxruntime 1.32, unsigned activations with signed weights (U8S8) in QDQ ran a ResNet-18 3.2x
faster than fp32, while signed activations (S8S8) left most convolutions in float (0.95x).
ORT's pre-processing (shape inference and graph optimisation) runs first. Calibration reads
the calibration split (default: a fixed sample of the train split) batch by batch. After
quantizing, `int8_check` proves which nodes run in int8, times int8 against
the fp32 input and compares their outputs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
from pathlib import Path

from mcomp.compressors.quantize.calibration_reader import CalibrationReader
from mcomp.compressors.quantize.options import (  # noqa: F401  (re-exported)
    CalibrationOptions,
    FallbackOptions,
    QuantizeOptions,
    Weight4Options,
    effective_reduce_range,
)
from mcomp.compressors.quantize.prepare import (
    attention_nodes,
    gemm_to_matmul,
    keep_outputs_float,
    pack_initializers,
    preprocess,
    working_directory,
)
from mcomp.errors import StageError
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext

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
}
# dynamic mode never quantizes Conv: ConvInteger ran slower than fp32 on these machines
DYNAMIC_OP_TYPES = ["MatMul", "Attention", "LSTM", "GRU", "Gather"]


class QuantizeStage(Stage):
    """int8 quantization of an ONNX model through onnxruntime."""

    name = "quantize"
    Options = QuantizeOptions
    consumes = ModelKind.ONNX
    produces = ModelKind.ONNX

    def __init__(self, options: QuantizeOptions) -> None:
        super().__init__(options)
        self._warned: set[str] = set()
        # learned activation ranges from QAT (mcomp.compressors.qat.stage), applied as onnxruntime
        # TensorQuantOverrides; set by the qat stage, or read from ctx.shared after
        # `finetune: {qat: true}`
        self.tensor_overrides: dict | None = None
        self._calibration_facts: dict | None = None
        self._auto_choice: str | None = None
        self._overrides: dict = {}
        self._auto_reason = ""

    def check(self, model: ModelState, ctx: StageContext) -> None:
        if self.options.mode == "static" and not ctx.datasets.calibration:
            raise StageError(
                "quantize: static mode needs calibration samples; give "
                "`data.calibration` or `data.train`, or use `mode: dynamic`"
            )
        if self.options.op_types and self.options.mode != "weight4":
            _check_op_types(self.options.op_types, self.options.mode)
        if model.onnx_model is not None:  # a torch model's node names exist only after export
            self._excluded_nodes(model.onnx_model, ctx)

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        import onnx

        folder = ctx.workdir / "quantize"
        folder.mkdir(exist_ok=True)
        source = folder / "fp32.onnx"
        onnx.save(model.onnx_model, source)
        prepared_path = preprocess(source, folder / "prepared.onnx", ctx)
        prepared = onnx.load(str(prepared_path))
        mode = self._resolve_mode(prepared)
        if mode == "weight4":
            from mcomp.compressors.quantize.lowbit import quantize_weight4

            quantized = quantize_weight4(prepared, self.options.weight4, folder)
            self.details = {"mode": mode, "bits": 4, **self.options.weight4.model_dump()}
            return self._finish(
                model, quantized, prepared, ctx, folder, QUANTIZED_OPS | {"MatMulNBits"}
            )
        excluded = self._excluded_nodes(prepared, ctx)
        if mode == "static" and self.options.float_attention:
            attention = attention_nodes(prepared) - excluded
            excluded |= attention
            if attention:
                self.details["float_attention_nodes"] = len(attention)
        self._qat_overrides(prepared, ctx, mode)
        quantized = self.quantize_once(
            prepared_path,
            folder / "int8.onnx",
            model,
            excluded,
            ctx,
            options=self.options,
            mode=mode,
        )
        self.details.update(
            {
                "mode": mode,
                "format": self.options.format if mode == "static" else "dynamic",
                "activation_type": self.options.activation_type,
                "weight_type": self.options.weight_type,
                "reduce_range": _reduce_range(self.options),
                "per_channel": self.options.per_channel,
            }
        )
        goal = self._goal(model, ctx)
        if goal is not None and self.options.fallback.enabled:
            from mcomp.compressors.quantize.fallback import fallback_search

            quantized, excluded, facts = fallback_search(
                self,
                prepared_path,
                first=quantized,
                excluded=excluded,
                state=model,
                goal=goal,
                ctx=ctx,
                mode=mode,
            )
            self.details["fallback"] = facts
        self.details["excluded_nodes"] = sorted(excluded)
        if self.options.mode == "auto":
            self.details["mode_requested"] = "auto"
            self.notes.append(f"mode auto: {mode} ({self._auto_reason})")
        return self._finish(model, quantized, prepared, ctx, folder, QUANTIZED_OPS)

    def _finish(
        self, model: ModelState, quantized, prepared, ctx: StageContext, folder: Path, ops: set[str]
    ) -> ModelState:
        pack_initializers(quantized)
        counts: dict[str, int] = {}
        for node in quantized.graph.node:
            if node.op_type in ops:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if not counts:
            raise StageError(
                "quantize: onnxruntime quantized no node of this model; check "
                "`op_types`/`exclude_nodes`/`exclude_op_types`"
            )
        self.details["int8_nodes"] = counts
        if self._calibration_facts:
            self.details["calibration"] = self._calibration_facts
        from mcomp.compressors.quantize.int8_check import prove_int8

        self.notes += prove_int8(
            model.onnx_model,
            quantized,
            [quantized, prepared],
            ctx,
            folder,
            self.options,
            self.details,
        )
        return model.with_onnx(quantized)

    def _goal(self, model: ModelState, ctx: StageContext):
        """The metric the quantized model must reach, or None when no budget is known.

        An explicit `max_accuracy_drop` counts from this stage's fp32 input; the recipe's
        constraint counts from the run's baseline, as the pipeline checks it at the end."""
        from mcomp.compressors.quantize.fallback import Goal

        if self.options.max_accuracy_drop is None and ctx.accuracy_budget is None:
            return None  # no budget: nothing to evaluate before quantizing
        higher = ctx.metric.higher_is_better
        input_metric = ctx.evaluate(model)
        if self.options.max_accuracy_drop is not None:
            return Goal(
                input_metric,
                input_metric,
                self.options.max_accuracy_drop,
                higher,
                "quantize.max_accuracy_drop",
            )
        return Goal(
            ctx.evaluate(ctx.original),
            input_metric,
            ctx.accuracy_budget,
            higher,
            "constraints.max_accuracy_drop",
        )

    def quantize_once(
        self,
        prepared_path: Path,
        target: Path,
        model: ModelState,
        excluded: set[str],
        ctx: StageContext,
        *,
        options: QuantizeOptions,
        mode: str,
    ):
        """One onnxruntime quantization of the prepared model with `options`; the model."""
        import onnx

        if mode == "static" and options.calibration.method == "auto":
            return self._quantize_auto(prepared_path, target, model, excluded, ctx, options)

        # onnxruntime's quantizer writes helper files into the current directory, and its
        # histogram calibrators print progress on stdout, which carries only mcomp's results
        # (mcomp's own progress says "calibrating"): their chatter is dropped.
        with working_directory(target.parent), contextlib.redirect_stdout(io.StringIO()):
            if mode == "static":
                self._quantize_static(prepared_path, target, model, excluded, ctx, options)
            else:
                self._quantize_dynamic(prepared_path, target, excluded, options)
        quantized = onnx.load(str(target))
        if mode == "static" and options.format == "qdq" and options.float_outputs:
            self.details["float_outputs"] = keep_outputs_float(quantized)
        if mode == "static" and options.scale == "pow2":
            from mcomp.compressors.quantize.lowbit import round_scales_pow2

            quantized = round_scales_pow2(quantized)
        return quantized

    def _quantize_auto(
        self,
        prepared_path: Path,
        target: Path,
        model: ModelState,
        excluded: set[str],
        ctx: StageContext,
        options: QuantizeOptions,
    ):
        from mcomp.compressors.quantize.auto_calibration import quantize_auto

        quantized, chosen, errors = quantize_auto(
            self, prepared_path, target, model, excluded, ctx, options
        )
        if chosen is not None:
            self._auto_choice = chosen
            self._calibration_facts = {
                **(self._calibration_facts or {}),
                "method": chosen,
                "requested": "auto",
                "output_error": errors,
            }
        return quantized

    def resolved(self, options: QuantizeOptions) -> QuantizeOptions:
        """`options` with `calibration.method: auto` replaced by the method it last chose."""
        if options.calibration.method != "auto" or self._auto_choice is None:
            return options
        calibration = options.calibration.model_copy(update={"method": self._auto_choice})
        return options.model_copy(update={"calibration": calibration})

    def _qat_overrides(self, prepared, ctx: StageContext, mode: str) -> None:
        from mcomp.compressors.qat.stage import RANGES_KEY, tensor_overrides

        learned = self.tensor_overrides or ctx.shared.pop(RANGES_KEY, None)
        if not learned:
            return
        if mode != "static":
            ctx.progress.warn(f"quantize: QAT ranges apply to static mode only, not {mode}")
            return
        self._overrides, facts = tensor_overrides(prepared, learned)
        self.details["qat"] = facts
        if facts["unmapped"]:
            ctx.progress.warn(
                f"quantize: no ONNX node found for the QAT ranges of "
                f"{facts['unmapped']}; they are calibrated instead"
            )

    def set_calibration_facts(self, options: QuantizeOptions) -> None:
        """Report the settings of the model the fallback chose, not of its last trial."""
        self.details["per_channel"] = options.per_channel
        if self._calibration_facts:
            self._calibration_facts["method"] = options.calibration.method

    def _resolve_mode(self, model) -> str:
        """`auto`: dynamic when MatMul/Gemm carry most MACs (transformers, MLPs), else static.

        Dynamic never quantizes Conv, so a conv net always gets static quantization."""
        if self.options.mode != "auto":
            return self.options.mode
        from mcomp.measure.onnx_macs import CONV_OPS, node_macs_by_name

        conv_ops = {node.name for node in model.graph.node if node.op_type in CONV_OPS}
        macs = node_macs_by_name(model)
        conv = sum(m for name, m in macs.items() if name in conv_ops)
        total = sum(macs.values())
        share = conv / total if total else 0.0
        mode = "dynamic" if total and share < 0.5 else "static"
        self._auto_reason = f"Conv carries {share:.0%} of {total:,} MACs"
        return mode

    def _excluded_nodes(self, model, ctx: StageContext) -> set[str]:
        """Node names matched by `exclude_nodes` globs or `exclude_op_types`; warns once per
        pattern that matches nothing."""
        excluded = set()
        nodes = [(node.name, node.op_type) for node in model.graph.node]
        for pattern in self.options.exclude_nodes:
            matched = {name for name, _ in nodes if fnmatch.fnmatchcase(name, pattern)}
            excluded |= matched
            if not matched and pattern not in self._warned:
                self._warned.add(pattern)
                ctx.progress.warn(
                    f"quantize: exclude_nodes pattern {pattern!r} matches no node "
                    f"(e.g. {', '.join(n for n, _ in nodes[:3])})"
                )
        for op_type in self.options.exclude_op_types:
            matched = {name for name, op in nodes if op == op_type}
            excluded |= matched
            if not matched and op_type not in self._warned:
                self._warned.add(op_type)
                ctx.progress.warn(
                    f"quantize: exclude_op_types entry {op_type!r} matches no "
                    f"node; the model has {sorted({op for _, op in nodes})}"
                )
        return excluded

    def _quantize_static(
        self,
        source: Path,
        target: Path,
        model: ModelState,
        excluded: set[str],
        ctx: StageContext,
        options: QuantizeOptions,
    ) -> None:
        from onnxruntime import quantization as q

        calib = options.calibration
        method, overrides, facts = calib.method, dict(self._overrides), {}
        if method == "entropy":
            from mcomp.compressors.quantize.entropy import HISTOGRAM_BINS, entropy_ranges

            # ORT's own entropy calibration gives minmax's ranges (see calibration_entropy):
            # mcomp computes them, and ORT's minmax pass is only what the quantizer needs
            ranges = entropy_ranges(
                source,
                CalibrationReader(ctx, model, calib.samples),
                symmetric=options.symmetric_activations,
                folder=target.parent,
            )
            ctx.progress.finish()
            overrides = {**ranges, **overrides}  # QAT's learned ranges win
            method, facts = "minmax", {"histogram_bins": HISTOGRAM_BINS}
        reader = CalibrationReader(ctx, model, calib.samples)
        methods = {
            "minmax": q.CalibrationMethod.MinMax,
            "percentile": q.CalibrationMethod.Percentile,
        }
        extra = {
            "ActivationSymmetric": options.symmetric_activations,
            "WeightSymmetric": options.symmetric_weights,
            # collect in chunks of batches: memory flat in the number of samples
            "CalibStridedMinMax": reader.stride(),
        }
        if method == "percentile":
            extra["CalibPercentile"] = calib.percentile
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        formats = {"qdq": q.QuantFormat.QDQ, "qoperator": q.QuantFormat.QOperator}
        try:
            q.quantize_static(
                str(source),
                str(target),
                reader,
                quant_format=formats[options.format],
                per_channel=options.per_channel,
                reduce_range=_reduce_range(options),
                activation_type=_qtype(options.activation_type),
                weight_type=_qtype(options.weight_type),
                calibrate_method=methods[method],
                op_types_to_quantize=options.op_types or None,
                nodes_to_exclude=sorted(excluded) or None,
                extra_options=extra,
            )
        except Exception as exc:
            raise StageError(
                f"quantize: onnxruntime static quantization failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            ) from None
        ctx.progress.finish()
        self._calibration_facts = {"method": calib.method, "samples": reader.samples, **facts}

    def _quantize_dynamic(
        self, source: Path, target: Path, excluded: set[str], options: QuantizeOptions
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
                reduce_range=_reduce_range(options),
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


def _reduce_range(options: QuantizeOptions) -> bool:
    import platform

    from mcomp.measure.cpu_features import cpu_features

    return effective_reduce_range(options, cpu_features(), platform.machine())


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def _check_op_types(op_types: list[str], mode: str) -> None:
    from onnxruntime.quantization import registry

    known = (
        set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry)
        if mode == "static"
        else set(registry.IntegerOpsRegistry)
    )
    unknown = [op for op in op_types if op not in known]
    if unknown:
        raise StageError(
            f"quantize.op_types: onnxruntime cannot {mode}-quantize {unknown}; "
            f"quantizable: {', '.join(sorted(known))}"
        )
