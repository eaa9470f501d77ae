"""Options of the fp32 graph rewrites the quantize stage makes before onnxruntime's
quantizer: cross-layer equalization (`equalize.py`) and SmoothQuant (`smoothquant.py`).

Each takes a shorthand, `equalization: true` (or `false`, `auto`), or the full mapping.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mcomp.stage import StageOptions

Switch = bool | Literal["auto"]


class EqualizationOptions(StageOptions):
    """Cross-layer equalization of Conv → ReLU-like → Conv chains (Nagel et al. 2019)."""

    enabled: Switch = Field(
        "auto",
        description="true: equalize every Conv → (ReLU | LeakyReLU | PReLU | nothing) → Conv "
        "pair whose middle tensor has one reader (depthwise included; Clip(0, 6) pairs are "
        "skipped, as the fp32 function must not change); auto: with per-tensor weights "
        "(`per_channel: false`), only where the int8 model's output error on calibration "
        "samples is lower with it; off with per-channel weights, where it did not help on the "
        "real-model benchmark (static mode only).",
    )
    ranges: Literal["weights", "activations"] = Field(
        "weights",
        description="What each pair balances. weights: the two layers' weight ranges (the "
        "paper's data-free rule); activations: the middle tensor's channel ranges on "
        "calibration samples against the second layer's weights (aimed at per-channel "
        "weights; on the PP-OCR classifier it did worse than `weights`).",
    )
    high_bias_absorption: bool = Field(
        False,
        description="Also move the part of a ReLU pair's pre-activation that stays positive "
        "on every calibration sample into the next Conv's bias; exact on inputs whose "
        "activations stay within the calibration minimum, not on all inputs.",
    )


class SmoothQuantOptions(StageOptions):
    """SmoothQuant for MatMul/Gemm inputs with outlier channels (Xiao et al. 2023)."""

    enabled: Switch = Field(
        "auto",
        description="true: divide each MatMul/Gemm input channel j by s_j = max|X_j|^alpha / "
        "max|W_j|^(1-alpha) (folded into the LayerNorm, Mul, Add or MatMul that produces it, "
        "else a Mul node, kept float) and multiply the weight rows by s_j; auto: dynamic mode "
        "only, where the input has outlier channels and the int8 output error on calibration "
        "samples is lower with it (static mode: only with `true`).",
    )
    alpha: float | Literal["auto"] = Field(
        "auto",
        description="Migration strength in [0, 1]; auto: the one of `alphas` with the "
        "least int8 output error on calibration samples.",
    )
    alphas: list[float] = Field(
        default_factory=lambda: [0.3, 0.5, 0.7],
        min_length=1,
        max_length=8,
        description="The strengths `alpha: auto` compares (each costs one quantization).",
    )
    outlier_ratio: float = Field(
        8.0,
        gt=1,
        description="auto: an input has outlier channels when its largest channel |max| is at "
        "least this many times the median channel's.",
    )

    @field_validator("alpha", "alphas")
    @classmethod
    def _strengths_in_unit_range(cls, value):
        for alpha in value if isinstance(value, list) else [value]:
            if alpha != "auto" and not 0 <= alpha <= 1:
                raise ValueError("a SmoothQuant strength is in [0, 1]")
        return value


def switch(value):
    """The shorthand `equalization: true` as `{enabled: true}` (a pydantic before-hook)."""
    return {"enabled": value} if isinstance(value, bool | str) else value
