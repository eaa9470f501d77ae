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

The stage is thin: `core.quantize_model` does the work (the qat stage calls it too). Defaults
were chosen by measurement, not by the docs: on AVX-512 VNNI / AMX CPUs with
onnxruntime 1.32, unsigned activations with signed weights (U8S8) in QDQ ran a ResNet-18 3.2x
faster than fp32, while signed activations (S8S8) left most convolutions in float (0.95x).
ORT's pre-processing (shape inference and graph optimisation) runs first. Calibration reads
the calibration split (default: a fixed sample of the train split) batch by batch. After
quantizing, `int8_check` proves which nodes run in int8, times int8 against
the fp32 input and compares their outputs.
"""

from __future__ import annotations

from mcomp.compressors.quantize.options import QuantizeOptions
from mcomp.compressors.quantize.selection import check_quantize_options
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext


class QuantizeStage(Stage):
    """int8 quantization of an ONNX model through onnxruntime."""

    name = "quantize"
    Options = QuantizeOptions
    consumes = ModelKind.ONNX
    produces = ModelKind.ONNX

    def __init__(self, options: QuantizeOptions) -> None:
        super().__init__(options)
        self._warned: set[str] = set()  # exclude patterns warned about by check()

    def check(self, model: ModelState, ctx: StageContext) -> None:
        check_quantize_options(model.onnx_model, self.options, ctx, self._warned)

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        from mcomp.compressors.quantize.core import quantize_model

        # ranges learned by `finetune: {qat: true}` apply to this quantization only
        learned, ctx.facts.qat_ranges = ctx.facts.qat_ranges, None
        result = quantize_model(model, self.options, ctx, learned=learned, warned=self._warned)
        self.details = result.details
        self.notes += result.notes
        return model.with_onnx(result.model)
