"""The stage contract: what every compressor stage declares and the one method it runs.

A stage is a class with four class attributes and one method. A complete example (a test
registers it and checks that the written model really changed):

    class ScaleWeights(Stage):
        '''Multiply every weight by a factor.  YAML: `- scale: {factor: 2.0}`'''

        name = "scale"
        consumes = ModelKind.TORCH
        produces = ModelKind.TORCH

        class Options(StageOptions):
            factor: float = 2.0

        def run(self, model: ModelState, ctx: StageContext) -> ModelState:
            import torch

            with torch.no_grad():
                for p in model.module.parameters():
                    p.mul_(self.options.factor)
            return model

Register it with one line in `mcomp.compressors.registry.STAGES`. Keep torch/onnxruntime
imports inside functions: the module is imported to validate recipes, which must stay fast.

A stage may change the module in place and return the same state, as above: the pipeline
drops every cache of the returned model (its fp32 ONNX export, onnxruntime sessions) before
measuring or converting it, so a stale export can never be published. Facts for later
stages go into `ctx.facts` (typed fields, `StageFacts`); report facts into `self.details`
and short remarks into `self.notes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from mcomp.model.state import ModelKind, ModelState
from mcomp.progress import Progress
from mcomp.recipe.schema import Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mcomp.data.load import Datasets
    from mcomp.measure.metrics import MetricSpec
    from mcomp.run.distributed import DistContext


class StageOptions(BaseModel):
    """Base of every stage's options: strict, unknown keys rejected, no silent coercion
    (`'0.5'` is not 0.5, `true` is not 1; an int is still a float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass
class QatRange:
    """One module's activation range learned by quantization-aware training."""

    weight: np.ndarray  # the trained weight: identifies the module's node in the ONNX graph
    low: float
    high: float


@dataclass
class StageFacts:
    """What one stage leaves for a later one: a typed field each, written and read by name."""

    # {parameter name without wrapper prefix: bool mask of kept weights}. Written by magnitude
    # pruning; read by the training stages, which keep pruned weights at zero; cleared by
    # stages that change parameter names or shapes (channel and layer pruning, a new
    # distillation student); lowrank removes the layers it replaces.
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # {module name: QatRange} from `finetune: {qat: true}`; the next quantize stage takes them
    # as onnxruntime tensor overrides (and clears them).
    qat_ranges: dict[str, QatRange] | None = None


@dataclass
class StageContext:
    """What a stage may use besides the model: data, seed, threads, evaluation, progress, and
    the facts earlier stages left (`facts`)."""

    datasets: Datasets
    seed: int
    threads: int
    metric: MetricSpec
    task: Task
    batch_size: int
    original: ModelState
    workdir: Path
    progress: Progress
    facts: StageFacts = field(default_factory=StageFacts)
    # the original model's outputs on the eval split (fidelity metrics and label-free metrics
    # compare against them); set when the run is prepared
    reference_outputs: np.ndarray | None = None
    recipe_dir: Path = field(default_factory=Path.cwd)  # relative paths in options start here
    device: str = "cpu"  # where training stages run ("cpu" | "cuda")
    dist: DistContext | None = None  # set under torchrun with several processes
    # the recipe's `constraints.max_accuracy_drop` (vs the run's baseline; the tighter of it
    # and `max_relative_drop` in metric units once the baseline is measured): stages that can
    # trade accuracy for size/speed (quantize's fallback) aim for it when given no budget
    accuracy_budget: float | None = None
    # the original model's metric on the eval split, as the baseline measured it (None
    # until then): a stage that needs it does not evaluate the original model again
    original_metric: float | None = None
    # where training runs and why, logged by the training loop on its first call of the run
    device_note: str | None = None

    def evaluate(self, model: ModelState) -> float:
        """The task metric of `model` on the eval split (torch or onnxruntime)."""
        from mcomp.measure.evaluate import evaluate_metric

        return evaluate_metric(model, self)


class Stage:
    """Base class of compressor stages; see the module docstring for a complete example."""

    name: ClassVar[str]
    Options: ClassVar[type[StageOptions]]
    consumes: ClassVar[ModelKind]
    produces: ClassVar[ModelKind]

    def __init__(self, options: StageOptions) -> None:
        self.options = options
        self.details: dict[str, Any] = {}  # stage-specific facts for the report
        self.notes: list[str] = []  # short remarks shown in the report (and table footnotes)

    def runs_on_all_ranks(self) -> bool:
        """Under torchrun: True for training stages (every rank trains its shard under DDP);
        False runs the stage once on rank 0 and broadcasts the result."""
        return False

    def check(self, model: ModelState, ctx: StageContext) -> None:
        """Optional: reject options that cannot work, before any stage runs.

        Called once, with the model as loaded (a later stage may see another form of it).
        """

    def run(self, model: ModelState, ctx: StageContext) -> ModelState:
        raise NotImplementedError(f"stage {self.name!r} does not implement run()")
