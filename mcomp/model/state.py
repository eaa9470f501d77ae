"""The one model the pipeline carries between stages: a torch module or an ONNX graph."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcomp.recipe.schema import InputSpec, StrEnum

if TYPE_CHECKING:
    import onnx
    import torch


class ModelKind(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"
    ANY = "any"


@dataclass
class ModelState:
    """A model in one of two forms, with its input signature.

    `onnx_cache` holds the fp32 ONNX export of `module` made while measuring it; the pipeline
    reuses it for the automatic torch → ONNX conversion so a model is exported once. Keys of
    `extra` starting with "_" are caches of this exact model too (an onnxruntime session).
    The pipeline drops the caches a stage's result shares with the stage's input
    (`without_caches_of`), so a stage that edits the module in place and returns the same
    state can never publish a stale export; a cache the stage made itself (cluster's
    index-coded ONNX) is kept.
    """

    kind: ModelKind
    inputs: list[InputSpec]
    module: torch.nn.Module | None = None
    onnx_model: onnx.ModelProto | None = None
    onnx_cache: onnx.ModelProto | None = field(default=None, repr=False)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # index into the flattened outputs (`mcomp.model.outputs`) that metrics and the task
    # loss read; `model.output` sets it, the ONNX form keeps the same order
    output: int = 0

    @classmethod
    def from_torch(
        cls, module: torch.nn.Module, inputs: list[InputSpec], source: str = ""
    ) -> ModelState:
        return cls(kind=ModelKind.TORCH, inputs=inputs, module=module, source=source)

    @classmethod
    def from_onnx(
        cls, model: onnx.ModelProto, inputs: list[InputSpec], source: str = ""
    ) -> ModelState:
        return cls(kind=ModelKind.ONNX, inputs=inputs, onnx_model=model, source=source)

    def with_module(self, module: torch.nn.Module) -> ModelState:
        """A new torch state for a changed module (drops the stale ONNX cache)."""
        return ModelState(
            kind=ModelKind.TORCH,
            inputs=self.inputs,
            module=module,
            source=self.source,
            extra=self._carried_extra(),
            output=self.output,
        )

    def without_caches_of(self, given: ModelState) -> ModelState:
        """This state (a stage's result) without the caches it shares with `given` (the
        stage's input): they describe the model before the stage ran."""
        stale_export = self.onnx_cache is not None and self.onnx_cache is given.onnx_cache
        stale_keys = [
            k for k, v in self.extra.items() if k.startswith("_") and given.extra.get(k) is v
        ]
        if not stale_export and not stale_keys:
            return self
        return dataclasses.replace(
            self,
            onnx_cache=None if stale_export else self.onnx_cache,
            extra={k: v for k, v in self.extra.items() if k not in stale_keys},
        )

    def _carried_extra(self) -> dict[str, Any]:
        # Keys starting with "_" are caches of this exact model (e.g. an onnxruntime session).
        return {k: v for k, v in self.extra.items() if not k.startswith("_")}

    def with_onnx(self, model: onnx.ModelProto) -> ModelState:
        return ModelState(
            kind=ModelKind.ONNX,
            inputs=self.inputs,
            onnx_model=model,
            source=self.source,
            extra=self._carried_extra(),
            output=self.output,
        )
