"""The plain, explicit registry of stages: recipe name → "module:Class".

Entries are imported only when a recipe uses them, so `mcomp --help` never pays for them.
A test imports every entry. To add a stage, write its module and add one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcomp.stage import Stage

STAGES: dict[str, str] = {
    "prune": "mcomp.compressors.prune.stage:PruneStage",
    "finetune": "mcomp.compressors.finetune:FinetuneStage",
    "quantize": "mcomp.compressors.quantize.stage:QuantizeStage",
    "export": "mcomp.compressors.export:ExportStage",
    "distill": "mcomp.compressors.distill:DistillStage",
    "lowrank": "mcomp.compressors.lowrank:LowRankStage",
    "cluster": "mcomp.compressors.cluster.stage:ClusterStage",
    "qat": "mcomp.compressors.qat.stage:QatStage",
}


def stage_class(name: str) -> type[Stage]:
    """The class registered under `name` (KeyError if there is none)."""
    module_name, _, class_name = STAGES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
