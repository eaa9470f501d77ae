"""What a `.pt2` ExportedProgram or a TorchScript module cannot do, said before any work.

Both keep the weights and the computation but not the layer modules: an exported program's
graph calls aten operators on plain parameters, a TorchScript module's code is compiled.
Stages that only change weights in place (magnitude pruning, finetune, distill) work on
them; stages that replace or reshape layers (channel and layer pruning, low-rank, QAT's fake
quantization) or watch a layer's inputs (prune.reconstruct) cannot. `mcomp validate` finds
this from the file's content without loading it, and the stages' checks again at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcomp.recipe.schema import ModelFormat

KINDS = {
    ModelFormat.EXPORTED_PROGRAM: "torch.export ExportedProgram (.pt2)",
    ModelFormat.TORCHSCRIPT: "TorchScript module",
}
FIX = (
    "save the model's state_dict and name its `model.factory` (magnitude pruning, finetune "
    "and distill work on this format)"
)


def structural_need(name: str, options: Any) -> str | None:
    """What of stage `name` needs layer modules, or None."""
    if name == "prune" and options.method in ("channel", "layer"):
        return f"prune method {options.method} rebuilds layers"
    if name == "prune" and getattr(options, "reconstruct", False) is True:
        return "prune.reconstruct reads each layer's inputs through its module"
    if name == "lowrank":
        return "lowrank replaces layers with two smaller ones"
    if name == "qat" or (name == "finetune" and getattr(options, "qat", False)):
        return "quantization-aware training wraps layers in fake quantizers"
    return None


def refusal(kind: str, name: str, options: Any) -> str | None:
    """The one-line reason a stage cannot run on a model of `kind`, or None."""
    need = structural_need(name, options)
    if need is None:
        return None
    return f"{need}, and a {kind} keeps no layer modules; {FIX}"


def file_kind(path: Path) -> str | None:
    """KINDS' words for a .pt2 or TorchScript file (by content), else None."""
    from mcomp.model.load import archive_format

    try:
        with path.open("rb") as handle:
            zipped = handle.read(4).startswith(b"PK\x03\x04")
    except OSError:
        return None
    return KINDS.get(archive_format(path)) if zipped else None


def module_kind(module: Any) -> str | None:
    """KINDS' words for a loaded exported program's or TorchScript module, else None."""
    from mcomp.model.modes import is_exported, is_scripted

    if module is None:
        return None
    if is_exported(module):
        return KINDS[ModelFormat.EXPORTED_PROGRAM]
    if is_scripted(module):
        return KINDS[ModelFormat.TORCHSCRIPT]
    return None


def check_stage(module: Any, index: int, name: str, options: Any) -> None:
    """At run time: stage `name` at `index` cannot work on this loaded module's format."""
    from mcomp.errors import StageError

    kind = module_kind(module)
    reason = None if kind is None else refusal(kind, name, options)
    if reason is not None:
        raise StageError(f"stages[{index}].{name}: {reason}")
