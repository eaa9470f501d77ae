"""ONNX export with a parity check; the final artifact of a pipeline.

    - export:
        opset: 18
        atol: 1.0e-4           # onnxruntime vs torch output tolerance
        rtol: 1.0e-3
        parity_samples: 32

A torch model is exported with torch's default (torch.export-based) exporter, the weights
embedded and the batch axis dynamic, then run in onnxruntime beside torch on eval samples; a
difference beyond the tolerance is an error naming the output and the largest difference.
An ONNX model (e.g. after quantize) is checked with `onnx.checker` and a real onnxruntime run.
The pipeline writes the final model atomically to `output.dir/output.model`.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mcomp.errors import StageError
from mcomp.model.state import ModelKind, ModelState
from mcomp.stage import Stage, StageContext, StageOptions


class ExportOptions(StageOptions):
    opset: int = Field(
        18, ge=13, le=23, description="ONNX opset of the torch export (not used for ONNX input)."
    )
    atol: float = Field(
        1e-4, ge=0, description="Absolute tolerance of the onnxruntime-vs-torch parity check."
    )
    rtol: float = Field(
        1e-3, ge=0, description="Relative tolerance of the onnxruntime-vs-torch parity check."
    )
    parity_samples: int = Field(
        32, ge=1, le=100_000, description="Eval samples run through both torch and onnxruntime."
    )


class ExportStage(Stage):
    """Export to ONNX (or verify an ONNX model) and check it in onnxruntime."""

    name = "export"
    Options = ExportOptions
    consumes = ModelKind.ANY
    produces = ModelKind.ONNX

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        sample = {k: v[: self.options.parity_samples] for k, v in ctx.datasets.eval.inputs.items()}
        if model.kind == ModelKind.TORCH:
            return self._export_torch(model, sample, ctx)
        return self._verify_onnx(model, sample, ctx)

    def _export_torch(self, model: ModelState, sample, ctx: StageContext) -> ModelState:
        from mcomp.model.convert import DEFAULT_OPSET, check_parity, torch_to_onnx

        # A form an earlier stage made of this exact module (e.g. cluster's index-coded
        # weights) is kept rather than exported again as plain float weights.
        reuse = model.onnx_cache is not None and self.options.opset == DEFAULT_OPSET
        exported = model.onnx_cache if reuse else torch_to_onnx(model, opset=self.options.opset)
        diff = check_parity(
            model,
            exported,
            sample,
            threads=ctx.threads,
            atol=self.options.atol,
            rtol=self.options.rtol,
        )
        self.details = {
            "opset": self.options.opset,
            "parity_max_abs_diff": diff,
            "parity_samples": len(next(iter(sample.values()))),
        }
        return model.with_onnx(exported)

    def _verify_onnx(self, model: ModelState, sample, ctx: StageContext) -> ModelState:
        import onnx

        from mcomp.measure.inference import predict_batch

        try:
            onnx.checker.check_model(model.onnx_model)
            outputs = predict_batch(model, sample, threads=ctx.threads)
        except Exception as exc:
            raise StageError(
                f"export: the ONNX model does not pass onnx.checker / onnxruntime: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
        if not all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f"):
            raise StageError("export: onnxruntime produced NaN/inf outputs on eval samples")
        self.details = {
            "verified": "onnx.checker + onnxruntime run",
            "opset": next(
                (o.version for o in model.onnx_model.opset_import if o.domain in ("", "ai.onnx")),
                None,
            ),
        }
        return model
