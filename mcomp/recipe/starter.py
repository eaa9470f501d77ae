"""`mcomp init`: a commented starter recipe that `mcomp validate` accepts as written."""

from __future__ import annotations

import os
from pathlib import Path

from mcomp.errors import ModelLoadError, OutputError
from mcomp.recipe.schema import Task

HEADER = """\
# mcomp recipe, written by `mcomp init`. Check it with `mcomp validate {name}`,
# run it with `mcomp run {name}`. Every key: docs/recipe-reference.md.
version: 1
seed: 0                      # same recipe + same machine = same report (timings aside)
"""

MODEL_BUILTIN = """\
model:
  builtin: digits_cnn        # the bundled 8x8 digits CNN; replace with `path: your_model.pt`
data:
  train: digits              # used by finetune and (a fixed sample) for calibration
  eval: digits               # the metric and latency inputs
"""

MODEL_PATH = """\
model:
  path: {path}{factory}
  # inputs: [{{name: x, shape: [1, 8, 8], dtype: float32}}]   # if neither file nor data says
data:
  # Name your data: an .npz file with arrays x (inputs) and y (labels), or `digits`.
  {data_comment}train: {train}
  {data_comment}eval: {eval}{eval_note}
  batch_size: 64             # evaluation and calibration batch size
"""

TORCH_STAGES = """\
stages:
  - prune: {sparsity: 0.5}   # L1 magnitude, one threshold across Conv/Linear layers
  - finetune: {epochs: 2}    # recover the metric on the train split; zeros stay zero
  - quantize: {mode: static} # int8, calibrated on the calibration split
  - export: {}               # check onnxruntime against torch, write model.onnx
"""

ONNX_STAGES = """\
stages:                      # an ONNX model: only ONNX stages apply
  - quantize: {mode: static} # int8, calibrated on the calibration split
  - export: {}               # check the graph with onnx.checker and onnxruntime
"""

TAIL = """\
task: {task}
runtime:
  threads: auto              # MCOMP_THREADS or --threads override it
  latency: {{batch: 32, warmup: 5, runs: 30}}
constraints:                 # a broken limit makes `mcomp run` exit 1 (CI gate)
  {drop}
  # min_compression: 4       # compressed file at least 4x smaller than the baseline
  # max_latency_ms: 5        # batch-1 latency of the final model
output:
  dir: mcomp-out             # relative to this file
  model: model.onnx
"""


def starter_recipe(
    out: Path,
    *,
    model: Path | None = None,
    task: Task = Task.CLASSIFICATION,
    factory: str | None = None,
    data: str | None = None,
    eval_data: str | None = None,
) -> str:
    """The recipe text; paths are written relative to the recipe's folder. Without
    `eval_data`, `data` serves as train and eval split (see `shares_train_and_eval`)."""
    text = HEADER.format(name=out.name)
    if model is None:
        text += MODEL_BUILTIN + TORCH_STAGES
    else:
        if not model.is_file():
            raise ModelLoadError(f"--model: file not found: {model}")
        folder = _relative(model.parent, out)
        text += MODEL_PATH.format(
            path=_relative(model, out),
            factory=f'\n  factory: "{factory}"\n  python_path: ["{folder}"]'
            if factory
            else '\n  # factory: "package.module:function"   # for a state_dict',
            data_comment="" if data else "# ",
            train=_data_ref(data, out, "train.npz"),
            eval=_data_ref(eval_data or data, out, "eval.npz"),
            eval_note="   # the train file: replace it with held-out data"
            if shares_train_and_eval(data, eval_data)
            else "",
        )
        text += ONNX_STAGES if _is_onnx(model) else _torch_stages(model)
    drop = (
        "max_accuracy_drop: 0.01   # at most 1 point of accuracy lost"
        if task == Task.CLASSIFICATION
        else "max_relative_drop: 5%     # mse at most 5 % above the baseline's\n"
        "  # max_accuracy_drop: 0.01 # or an absolute limit, in mse units"
    )
    return text + TAIL.format(task=task.value, drop=drop)


SHARED_SPLIT_WARNING = (
    "{data} is both the train and the eval split, so the metric scores data the model is "
    "finetuned on; pass --eval-data HELD_OUT.npz (or edit data.eval)"
)


def shares_train_and_eval(data: str | None, eval_data: str | None) -> bool:
    """True when one file would be both splits: the metric then scores data the model was
    finetuned on (the bundled `digits` has its own held-out samples)."""
    return data is not None and data != "digits" and eval_data in (None, data)


def write_starter_recipe(out: Path, *, force: bool = False, **kwargs) -> Path:
    """Write the recipe atomically; refuse to replace an existing file unless `force`."""
    from mcomp.atomic import write_text_atomic

    if out.exists() and not force:
        raise OutputError(f"{out} exists; pass --force to overwrite it, or choose --out")
    if out.exists() and not out.is_file():
        raise OutputError(f"{out} is not a file; choose another --out")
    text = starter_recipe(out, **kwargs)
    try:
        write_text_atomic(out, text)
    except OSError as exc:  # a read-only folder, a full disk, a path below a file
        raise OutputError(
            f"--out: cannot write {out}: {exc.strerror or exc}; choose another --out"
        ) from None
    return out


def _relative(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()


def _data_ref(data: str | None, out: Path, placeholder: str) -> str:
    if data is None:
        return placeholder
    return data if data == "digits" else _relative(Path(data), out)


def _torch_stages(model: Path) -> str:
    """The torch stages; for a .pt2 or TorchScript file a line says which stages it cannot
    take (they rebuild layers it does not keep), so none of those is written."""
    from mcomp.model.format_limits import file_kind

    kind = file_kind(model)
    if kind is None:
        return TORCH_STAGES
    return TORCH_STAGES.replace(
        "stages:\n",
        f"stages:                      # a {kind}: magnitude pruning, finetune, distill,\n"
        "  # quantize and export work; channel/layer pruning, lowrank and QAT need the\n"
        "  # state_dict and its `model.factory`\n",
        1,
    )


def _is_onnx(model: Path) -> bool:
    """From the content, like `mcomp run`: an ONNX file named .pt still gets ONNX stages."""
    from mcomp.model.load import detect_format
    from mcomp.recipe.schema import ModelFormat

    return detect_format(model) == ModelFormat.ONNX
