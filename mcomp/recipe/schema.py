"""The typed recipe schema (pydantic v2, strict: unknown keys are errors).

A recipe names the model, the data, the ordered stages, the limits the result must meet and
where the output goes. Stage options are validated by each stage's own `Options` class (see
`mcomp.compressors.registry`); here `stages` is a list of one-key mappings `{name: options}`.

    version: 1
    seed: 0
    model: {builtin: digits_cnn}
    data: {train: digits, eval: digits}
    stages:
      - prune: {sparsity: 0.7}
      - finetune: {epochs: 3}
      - quantize: {mode: static}
      - export: {}
    constraints: {max_accuracy_drop: 0.01, min_compression: 4}
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Upper bounds of counts: far above any real use, low enough that a typo (an extra three
# zeros) fails validation instead of exhausting memory or time hours later.
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_THREADS = 1024
MAX_BATCH = 65_536
MAX_SAMPLES = 100_000_000
MAX_LIST = 1_000  # list-valued options: inputs, python_path, stages, ...
Dimension = Annotated[int, Field(ge=-1, le=2**31 - 1)]

# package.module:function, or a dotted attribute such as module:Class.from_pretrained
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _factory_ref(value: str | None) -> str | None:
    if value is not None and not FACTORY_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not of the form 'package.module:function' (or "
            "'package.module:Class.method')"
        )
    return value


def _distinct_names(names: list[str] | None, what: str) -> list[str] | None:
    """A name listed twice would feed one array to two inputs, or silently drop one."""
    seen: set[str] = set()
    for name in names or []:
        if name in seen:
            raise ValueError(f"{what} {name!r} is listed twice; name each {what} once")
        seen.add(name)
    return names


class StrEnum(str, Enum):
    """`enum.StrEnum` for Python 3.10: members compare equal to their strings."""

    def __str__(self) -> str:
        return str(self.value)


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are not coerced silently
    (strict: `'5'` is not 5, `true` is not 1; an int is still a float). Enum fields say
    `strict=False`: strict mode would accept only enum members, not their strings."""

    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False, strict=True)


class ModelFormat(StrEnum):
    AUTO = "auto"
    STATE_DICT = "state_dict"
    EXPORTED_PROGRAM = "exported_program"
    TORCHSCRIPT = "torchscript"
    PICKLE = "pickle"
    ONNX = "onnx"


class InputSpec(Strict):
    """One model input: its name, per-sample shape (no batch axis) and dtype."""

    name: str = Field(description="Input name; the data array fed to it goes by position.")
    shape: list[Dimension] = Field(
        max_length=16,
        description="Shape of one sample, without the batch axis; -1 for a size that varies.",
    )
    dtype: Literal["float32", "float16", "float64", "int64", "int32", "bool"] = Field(
        "float32", description="Element type; the data arrays are cast to it."
    )


class ModelSpec(Strict):
    """Where the model comes from: a file (`path`), a bundled model (`builtin`), or a
    `factory` alone that returns the loaded module (e.g. a Hugging Face `from_pretrained`)."""

    path: str | None = Field(None, description="Model file, relative to the recipe file.")
    builtin: Literal["digits_cnn", "digits_resnet"] | None = Field(
        None,
        description="A model shipped with mcomp: the quickstart's digits CNN, or a tiny "
        "ResNet (BatchNorm, residual blocks) for structured and layer pruning.",
    )
    format: ModelFormat = Field(
        ModelFormat.AUTO,
        strict=False,
        description="How to load the file; auto detects it from the content, not the extension.",
    )
    factory: str | None = Field(
        None,
        description="'package.module:function' building the module for a state_dict; without "
        "`path`, it returns the loaded model itself (e.g. "
        "'transformers:AutoModelForSequenceClassification.from_pretrained').",
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to `factory`. Without `path`, a string naming a "
        "file or folder relative to the recipe (a `from_pretrained` folder) is passed as that "
        "path, and one written as a path (`./x`, `../x`, `/x`) that does not exist is an error "
        "(docs/hf.md).",
    )
    python_path: list[str] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Folders (relative to the recipe) appended to sys.path so that `factory` "
        "imports (docs/security.md: a recipe that names them is code).",
    )
    output: str | int | None = Field(
        None,
        description="The output that the metric, fidelity and the task loss read, when the "
        "model returns several (a tuple, dict or dataclass): its key (`logits`) or its index "
        "in the flattened outputs (docs/recovery.md#models-with-several-outputs); default: the "
        "first.",
    )
    allow_pickle: bool = Field(
        False,
        description="Load a whole pickled module (executes code from the file); "
        "`--allow-pickle` does the same.",
    )
    inputs: list[InputSpec] | None = Field(
        None,
        max_length=MAX_LIST,
        description="Model inputs, in order; default: the file's own signature (ONNX, .pt2), "
        "else one input per data array.",
    )

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        return _factory_ref(value)

    @field_validator("inputs")
    @classmethod
    def _distinct(cls, value: list[InputSpec] | None) -> list[InputSpec] | None:
        _distinct_names([spec.name for spec in value or []], "input")
        return value

    @field_validator("output")
    @classmethod
    def _output_choice(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, bool):  # YAML `true` is not an index
            raise ValueError("must be an output's name or index")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.path is not None and self.builtin is not None:
            raise ValueError("give exactly one of 'path' or 'builtin'")
        if self.path is None and self.builtin is None and self.factory is None:
            raise ValueError(
                "give exactly one of 'path' or 'builtin' (or a `factory` that loads the model)"
            )
        if self.builtin is not None and self.factory is not None:
            raise ValueError("a `builtin` model takes no `factory`")
        return self


class SplitSpec(Strict):
    """One data split: an `.npz` file, the built-in digits set, or a Python factory.

    A plain string is shorthand: `digits` for the built-in set, anything else a path.
    """

    path: str | None = Field(None, description=".npz file, relative to the recipe file.")
    builtin: Literal["digits"] | None = Field(
        None,
        description="The bundled 8x8 digits: 1437 samples for train and calibration, the "
        "360 held-out ones for eval.",
    )
    factory: str | None = Field(
        None,
        description="'package.module:function' returning a torch Dataset or DataLoader whose "
        "items are (x, y), (x1, ..., y) or dicts keyed by array name.",
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to `factory`; a string naming a file or folder "
        "relative to the recipe is passed as that path (one written as a path that does not "
        "exist is an error).",
    )
    inputs: list[str] | None = Field(
        None,
        max_length=MAX_LIST,
        description="Array names fed to the model inputs, in order (default: ['x']).",
    )
    labels: str | None = Field(
        "y", description="Array name of the labels; null for unlabelled data."
    )
    samples: int | None = Field(
        None,
        gt=0,
        le=MAX_SAMPLES,
        description="Use at most this many samples (the first ones); null: all.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"builtin": value} if value == "digits" else {"path": value}
        return value

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        return _factory_ref(value)

    @field_validator("inputs")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return _distinct_names(value, "array")

    @model_validator(mode="after")
    def _one_source(self) -> SplitSpec:
        given = [k for k in ("path", "builtin", "factory") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'path', 'builtin' or 'factory'")
        return self


class DataSpec(Strict):
    """The data splits. `calibration` defaults to a fixed sample of `train`."""

    train: SplitSpec | None = Field(
        None,
        description="Training data for finetune, distill, gradual prune and qat: `digits`, a "
        "path to an .npz file, or a mapping of path/builtin/factory, inputs, labels, samples.",
    )
    calibration: SplitSpec | None = Field(
        None,
        description="Calibration data for static quantization: `digits`, a path to an .npz "
        "file, or a mapping; null: a fixed random sample of `train`.",
    )
    eval: SplitSpec | None = Field(
        None,
        description="Data for the metric, fidelity and latency inputs: `digits`, a path to an "
        ".npz file, or a mapping; null: `train`, with a warning.",
    )
    train_from: list[Literal["calibration", "eval"]] = Field(
        default_factory=list,
        max_length=2,
        description="Without `train`: train on the inputs of these splits, without their "
        "labels (the training stages then distil from the original model). An explicit "
        "opt-in, never a default: training on `eval` inputs makes the eval figures "
        "optimistic, which a warning and the training stages' report notes say.",
    )
    calibration_samples: int = Field(
        256,
        gt=0,
        le=1_000_000,
        description="Calibration samples: drawn at random (seeded) from `train`, or the "
        "first ones of `calibration`.",
    )
    batch_size: int = Field(
        64, gt=0, le=MAX_BATCH, description="Batch size for evaluation and calibration."
    )

    @model_validator(mode="after")
    def _train_source(self) -> DataSpec:
        _distinct_names(list(self.train_from), "split")
        if self.train_from and self.train is not None:
            raise ValueError("give `train` or `train_from`, not both")
        if "calibration" in self.train_from and self.calibration is None:
            raise ValueError(
                "`train_from: [calibration]` needs `calibration` (it defaults to a sample of "
                "`train`, which is what `train_from` replaces)"
            )
        if "eval" in self.train_from and self.eval is None:
            raise ValueError("`train_from: [eval]` needs `eval`")
        return self


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


BUILTIN_METRICS = (
    "accuracy",
    "mse",
    "mae",
    "top1_agreement",
    "cosine",
    "mean_abs_diff",
    "max_abs_diff",
)


class LatencySpec(Strict):
    """How onnxruntime CPU latency is timed: the baseline and every stage's model side by
    side at the end of the run, in `rounds` rounds of one block per model (docs/report.md)."""

    enabled: bool = Field(
        True, description="Time every model; false: the latency figures are null."
    )
    batch: int = Field(32, gt=0, le=MAX_BATCH, description="The larger batch timed beside batch 1.")
    warmup: int = Field(
        5,
        ge=0,
        le=10_000,
        description="Untimed calls before a model's first block (1 before its later ones).",
    )
    runs: int = Field(
        30,
        gt=0,
        le=100_000,
        description="Timed calls per model at batch 1, shared among the rounds (at least 3 "
        "per round); half as many at the larger batch (at least 1 per round). Fast models get "
        "more: every block lasts at least 15 ms.",
    )
    rounds: int = Field(
        15,
        ge=1,
        le=50,
        description="Rounds of side-by-side timing; a figure is the median of the round "
        "medians, its spread their min-max; a speed-up is the median of the round-by-round "
        "ratios within a 95 % interval of that median. More rounds narrow the interval.",
    )


class RuntimeSpec(Strict):
    """Threads for torch and onnxruntime, and latency timing."""

    threads: int | Literal["auto"] = Field(
        "auto",
        description="Intra-op threads for torch and onnxruntime; auto = CPU count, at "
        "most 8. MCOMP_THREADS overrides it, and `--threads` overrides both.",
    )
    latency: LatencySpec = Field(
        default_factory=LatencySpec,
        description="How onnxruntime CPU latency is timed, before and after every stage.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where training stages run: auto = CUDA when torch sees a GPU. "
        "Measurement, quantization and export always run on the CPU.",
    )
    distributed_timeout_s: int = Field(
        1800,
        gt=0,
        le=7 * 24 * 3600,
        description="Under torchrun: timeout of every collective, so a dead rank "
        "ends the run instead of hanging it.",
    )

    @field_validator("threads")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_THREADS:
            raise ValueError(f"threads must be between 1 and {MAX_THREADS}")
        return value


class ConstraintsSpec(Strict):
    """Limits the final model must meet; a broken one makes `mcomp run` exit 1."""

    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        description="Largest allowed metric loss vs the baseline, in the metric's "
        "units (0.01 = one point of accuracy; for lower-is-better metrics, the rise).",
    )
    max_relative_drop: float | None = Field(
        None,
        gt=0,
        description="Largest allowed metric loss as a fraction of the baseline's metric "
        "(0.05 or '5%': for mse, at most 5 % above the baseline's mse). The default budget "
        "`mcomp init` writes for regression.",
    )
    max_size_bytes: int | None = Field(
        None, gt=0, description="Largest final ONNX file size, in bytes."
    )
    max_compressed_size_bytes: int | None = Field(
        None,
        gt=0,
        description="Largest final ONNX file size after deflate (zlib level 9), in bytes.",
    )
    min_compression: float | None = Field(
        None, gt=0, description="Baseline compressed size / final compressed size."
    )
    min_speedup: float | None = Field(
        None,
        gt=0,
        description="Baseline latency / final latency at the larger batch, at the "
        "conservative end: the lowest of the round-by-round ratios (docs/report.md).",
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        description="Largest final latency at batch 1, in milliseconds, at the "
        "conservative end: the final model's slowest round.",
    )

    @field_validator("max_relative_drop", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            number = value.strip()[:-1].strip()
            try:
                return float(number) / 100
            except ValueError:
                raise ValueError(f"{value!r} is not a percentage such as '5%'") from None
        return value


class ReplaceMode(StrEnum):
    AUTO = "auto"
    FOLDER = "folder"
    FILES = "files"


class OutputSpec(Strict):
    """Where results go: the directory (default ./mcomp-out) and the final model's name."""

    dir: str | None = Field(
        None,
        description="Output directory, relative to the recipe file; default ./mcomp-out in "
        "the current directory (always, for a bundled recipe); `--out` overrides it.",
    )
    model: str = Field("model.onnx", description="File name of the final ONNX model.")
    torch_model: str | None = Field(
        None,
        description="Also save the last torch form of the model (before its ONNX "
        "conversion) as a torch.export program under this name (e.g. model.pt2): it reloads "
        "without the original class, also after structured pruning.",
    )

    baseline: str | None = Field(
        None,
        description="Also write the fp32 baseline (the model as loaded) as ONNX under this "
        "name (e.g. baseline.onnx), so that `mcomp compare baseline.onnx model.onnx` works "
        "for built-in and torch models too.",
    )
    cache: bool = Field(
        True,
        description="Keep each stage's result in the output folder's work area (.mcomp/cache, "
        "the latest run's only) so that `mcomp run --resume` can reuse it; false saves the "
        "disk space (up to two fp32 models per torch stage: the module and its ONNX form).",
    )
    replace: ReplaceMode = Field(
        ReplaceMode.AUTO,
        strict=False,
        description="How the output set is switched in: folder = the whole folder with one "
        "rename (a reader sees the old set or the new one); files = file by file, the "
        "manifest last (for a folder that cannot be renamed: a mount point, the current "
        "directory); auto = folder where possible (docs/outputs.md).",
    )

    @field_validator("torch_model")
    @classmethod
    def _pt2_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or not value.endswith(".pt2")):
            raise ValueError("must be a plain file name ending in .pt2")
        return value

    @field_validator("model", "baseline")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or not value.endswith(".onnx")):
            raise ValueError("must be a plain file name ending in .onnx")
        return value

    @model_validator(mode="after")
    def _distinct_names(self) -> OutputSpec:
        if self.baseline is not None and self.baseline == self.model:
            raise ValueError(f"baseline and model are both {self.model!r}; name them apart")
        return self


class Recipe(Strict):
    """A whole recipe file."""

    version: Literal[1] = Field(1, description="Recipe schema version; only 1 exists.")
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seeds Python, numpy and torch (stage i runs with seed + i); `--seed` "
        "overrides it.",
    )
    model: ModelSpec = Field(
        description="The model to compress: a file (`path`) or a bundled one (`builtin`)."
    )
    data: DataSpec = Field(default_factory=DataSpec, description="The data splits and batch sizes.")
    task: Task = Field(
        Task.CLASSIFICATION,
        strict=False,
        description="Decides the training loss (cross-entropy or MSE), the default "
        "metric and distillation's default loss (kl or mse).",
    )
    metric: str | None = Field(
        None,
        description="One of " + ", ".join(BUILTIN_METRICS) + " or 'package.module:function'"
        "; default: accuracy (classification) or mse (regression) with labels, fidelity to the "
        "original model (top1_agreement / cosine) without.",
    )
    metric_higher_is_better: bool | None = Field(
        None, description="Direction of a user metric (default true)."
    )
    runtime: RuntimeSpec = Field(
        default_factory=RuntimeSpec,
        description="Threads, latency timing, training device, distributed timeout.",
    )
    stages: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_LIST,
        description="Ordered stages, each a one-key mapping {stage: options}.",
    )
    constraints: ConstraintsSpec = Field(
        default_factory=ConstraintsSpec,
        description="Limits on the final model; each one set is checked, and a broken one "
        "makes `mcomp run` exit 1.",
    )
    output: OutputSpec = Field(
        default_factory=OutputSpec, description="Where the model and the report are written."
    )

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # Literal[1] accepts `true` and `1.0` (both == 1), even in strict mode
        if type(value) is not int:
            raise ValueError("version must be the integer 1")
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is None or value in BUILTIN_METRICS or ":" in value:
            return value
        raise ValueError(
            f"unknown metric {value!r}: use one of {', '.join(BUILTIN_METRICS)} "
            "or 'package.module:function'"
        )
