"""Options of the `quantize` stage (see quantize.py for what each mode does)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mcomp.compressors.quantize.rewrite_options import (
    EqualizationOptions,
    SmoothQuantOptions,
    switch,
)
from mcomp.stage import StageOptions

Method = Literal["auto", "minmax", "mean_minmax", "mse", "entropy", "percentile"]
ExplicitMethod = Literal["minmax", "mean_minmax", "mse", "entropy", "percentile"]


class CalibrationOptions(StageOptions):
    """How static quantization finds activation ranges."""

    method: Method = Field(
        "auto",
        description="How activation ranges are chosen. minmax: the extremes over all "
        "samples; mean_minmax: the mean of each sample's extremes (NNCF's default); mse: "
        "the clipping with the least squared quantization error; percentile: onnxruntime's "
        "percentile of |activation|, clamped to min/max; entropy: KL-divergence "
        "thresholds; auto: quantize with each of `candidates` and keep the model whose "
        "outputs are closest to fp32's on calibration samples.",
    )
    candidates: list[ExplicitMethod] = Field(
        default_factory=lambda: ["minmax", "percentile"],
        min_length=1,
        max_length=5,
        description="The methods `method: auto` compares (each costs one quantization).",
    )
    percentile: float = Field(
        99.999,
        gt=50,
        le=100,
        description="Percentile of |activation| "
        "kept by `method: percentile` (ORT's CalibPercentile).",
    )
    samples: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Use at most this many calibration "
        "samples (default: all of data.calibration_samples).",
    )


class FallbackOptions(StageOptions):
    """Limits of the accuracy-aware fallback search (see `quantize_fallback`)."""

    enabled: bool = Field(
        True, description="Search when a budget is known and plain int8 breaks it."
    )
    max_trials: int = Field(
        8, ge=1, le=10_000, description="Quantizations tried after the first one."
    )
    max_seconds: float = Field(
        120, gt=0, le=7 * 24 * 3600, description="Wall-clock limit of the search."
    )
    group_size: int = Field(
        1, ge=1, le=10_000, description="Nodes put back in float per trial, most sensitive first."
    )
    alternatives: bool = Field(
        True,
        description="Before leaving nodes in float, try "
        "per-channel weights and the other calibration methods "
        "(each one quantization, from the statistics already collected).",
    )


class Weight4Options(StageOptions):
    """`mode: weight4`: 4-bit block-quantized MatMul weights (onnxruntime MatMulNBits)."""

    block_size: int = Field(
        32, ge=16, le=65_536, description="Weights per scale (a power of 2, >= 16)."
    )
    symmetric: bool = Field(True, description="Symmetric 4-bit weights (no zero points).")

    @model_validator(mode="after")
    def _power_of_two(self) -> Weight4Options:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of 2, got {self.block_size}")
        return self


class QuantizeOptions(StageOptions):
    mode: Literal["static", "dynamic", "auto", "weight4"] = "static"
    bits: Literal[8, 4] = Field(8, description="4 is `mode: weight4` (weight-only, MatMul).")
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    float_outputs: bool = Field(
        True,
        description="Keep the model's outputs in float (static "
        "QDQ): no QuantizeLinear/DequantizeLinear pair in front of a "
        "graph output, which would round the logits to 256 levels.",
    )
    float_attention: bool = Field(
        True,
        description="Static mode: leave Softmax and MatMuls "
        "of two activations (attention) in float; faster and more "
        "accurate with onnxruntime on these CPUs.",
    )
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8",
        description="uint8 (U8 activations: what onnxruntime's x86 int8 kernels run "
        "fastest) or int8 (S8S8, slower on x86).",
    )
    weight_type: Literal["auto", "int8", "uint8"] = Field(
        "auto",
        description="auto: int8 (with uint8 activations U8S8, onnxruntime's fastest int8 "
        "on x86 and ARM; on x86 without VNNI its weights are 7-bit, see reduce_range). "
        "uint8 (U8U8) keeps 8-bit weights there but ran 1.5-2.4x slower on real CNNs "
        "(1x1 and depthwise convolutions).",
    )
    reduce_range: bool | Literal["auto"] = Field(
        "auto",
        description="7-bit weights. auto: on only where onnxruntime advises it, U8S8 "
        "on an x86 CPU without VNNI/AMX (its AVX2 kernel adds pairs of u8*s8 products in "
        "16 bits, which can saturate); VNNI accumulates in 32 bits and needs no reduction.",
    )
    symmetric_activations: bool = Field(
        False, description="Activation ranges symmetric around zero."
    )
    symmetric_weights: bool | Literal["auto"] = Field(
        "auto",
        description="Weight ranges symmetric around zero (zero point 0 for int8, 128 for "
        "uint8). auto: on when the model's weights are sparse (at least "
        "a tenth exact zeros, e.g. after pruning), so every pruned weight is stored as one "
        "byte value and the file still compresses; off otherwise.",
    )
    transformer_fusion: bool | Literal["auto"] = Field(
        "auto",
        description="Run onnxruntime's transformer optimizer on the fp32 graph first: "
        "GELU and bias + GELU subgraphs become single float ops, and in dynamic mode "
        "attention becomes `Attention` (then int8 QAttention) where the graph matches; kept "
        "only if the fp32 outputs stay within 1e-4. auto: where the graph has Erf, Tanh + "
        "Pow or Softmax + MatMul; false: off.",
    )
    recurrent: Literal["dynamic", "float"] = Field(
        "dynamic",
        description="Static mode: LSTM layers as onnxruntime's DynamicQuantizeLSTM (int8 "
        "weights, 4x smaller) or left in float.",
    )
    bias_correction: bool = Field(
        True,
        description="Static QDQ: shift each Conv/Gemm bias by the mean output error that "
        "rounding its weights causes (weight error x mean input per channel, from the "
        "calibration samples; Nagel et al. 2019, NNCF's fast bias correction). On by "
        "default: it raised fidelity on every real CNN benchmarked (docs/quantization.md).",
    )
    scale: Literal["float", "pow2"] = Field(
        "float", description="pow2: round every scale of a static model to a power of two."
    )
    calibration: CalibrationOptions = Field(default_factory=CalibrationOptions)
    calibration_method: Method | None = Field(
        None, description="Shorthand for `calibration.method` (kept for old recipes)."
    )
    op_types: list[str] | None = Field(
        None, description="Op types to quantize (default: all that onnxruntime can)."
    )
    exclude_op_types: list[str] = Field(default_factory=list)
    exclude_nodes: list[str] = Field(
        default_factory=list, description="Glob patterns over ONNX node names left in float."
    )
    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        description="Largest metric loss vs "
        "the stage's fp32 input; default: the recipe's "
        "constraints.max_accuracy_drop (vs the baseline).",
    )
    fallback: FallbackOptions = Field(default_factory=FallbackOptions)
    weight4: Weight4Options = Field(default_factory=Weight4Options)
    # `equalization: true` is turned into the mapping by `_switches` (the JSON schema
    # allows the scalar: mcomp/recipe/json_schema.py)
    equalization: EqualizationOptions = Field(
        default_factory=EqualizationOptions,
        description="Cross-layer equalization of the fp32 graph before int8 (true, false, "
        "auto, or the mapping); see docs/quantization.md.",
    )
    smoothquant: SmoothQuantOptions = Field(
        default_factory=SmoothQuantOptions,
        description="SmoothQuant of MatMul/Gemm inputs before int8 (true, false, auto, or "
        "the mapping); see docs/quantization.md.",
    )

    _switches = field_validator("equalization", "smoothquant", mode="before")(switch)

    @model_validator(mode="after")
    def _bits_and_mode(self) -> QuantizeOptions:
        if self.bits == 4:
            if "mode" in self.model_fields_set and self.mode != "weight4":
                raise ValueError(
                    f"bits: 4 is weight-only 4-bit (mode: weight4), not mode: {self.mode}"
                )
            self.mode = "weight4"
        if self.scale == "pow2" and self.mode not in ("static", "auto"):
            raise ValueError("scale: pow2 applies to static int8 (mode: static)")
        return self

    @model_validator(mode="after")
    def _one_calibration_method(self) -> QuantizeOptions:
        if self.calibration_method is None:
            return self
        if (
            "method" in self.calibration.model_fields_set
            and self.calibration.method != self.calibration_method
        ):
            raise ValueError(
                "give the calibration method once: `calibration.method` or "
                "`calibration_method`, not both"
            )
        self.calibration.method = self.calibration_method
        return self


def _x86_without_vnni(isa: list[str], machine: str) -> bool:
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not any("VNNI" in name or "AMX" in name for name in isa)


def effective_weight_type(options: QuantizeOptions, isa: list[str], machine: str) -> str:
    """`weight_type` with `auto` decided for this CPU: `isa` as from
    `mcomp.measure.cpu_features.cpu_features()`, `machine` as from `platform.machine()`.

    int8 on every CPU. Measured on an AVX2-only x86 CPU (no VNNI), where uint8 weights
    (U8U8) would keep all 8 bits that U8S8 loses to `reduce_range`: onnxruntime fuses U8S8
    convolutions into its symmetric-weight kernels and U8U8 ones not, so U8U8 ran 11x
    slower on the OCR recogniser's 1x1 convolutions, 1.6x on its depthwise ones (the whole
    model 2.4x) and 1.5x on the easyocr recogniser at batch 8, for fidelity that differed
    by less than the sampling noise (string agreement 0.574 vs 0.563, 0.910 vs 0.906; the OCR
    classifier 0.984 vs 0.988 the other way). `isa` and `machine` stay arguments: the choice
    is per CPU by contract, and a CPU where U8U8 wins can be added by measurement."""
    del isa, machine
    if options.weight_type != "auto":
        return options.weight_type
    return "int8"


def effective_reduce_range(options: QuantizeOptions, isa: list[str], machine: str) -> bool:
    """`reduce_range` with `auto` decided for this CPU (see `effective_weight_type`)."""
    if options.reduce_range != "auto":
        return options.reduce_range
    u8s8 = (
        options.activation_type == "uint8"
        and effective_weight_type(options, isa, machine) == "int8"
    )
    return u8s8 and _x86_without_vnni(isa, machine)
