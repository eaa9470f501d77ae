"""The shape of the house: no import circle, modules import in any order, no helper that takes
a stage object, facts between stages only through typed fields."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> import name (pyproject's package-dir)
PACKAGES = {"mcomp": "mcomp", "cli": "mcomp.cli", "compressors": "mcomp.compressors"}


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            parts = [p for p in parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:` (never executed, so no import edge)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    return skipped


def _import_graph() -> dict[str, set[str]]:
    """Module -> mcomp modules it imports, at module level or inside functions."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mcomp"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("mcomp")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if colour[target] == 1:
                return path[path.index(target) :] + [target]
            if colour[target] == 0 and (found := visit(target)):
                return found
        path.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if colour[start] == 0 and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back_through_others():
    graph = _import_graph()
    assert "mcomp.compressors.quantize.core" in graph  # the walk found the packages
    assert _cycle(graph) is None


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
def test_every_module_imports_in_a_fresh_interpreter_in_any_order(order):
    names = [n for n in _modules() if not n.endswith("__main__")]
    if order == "reversed":
        names.reverse()
    elif order == "shuffled":
        random.Random(13).shuffle(names)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _stage_classes() -> set[str]:
    from mcomp.compressors.registry import STAGES

    return {"Stage", *(entry.partition(":")[2] for entry in STAGES.values())}


def test_no_helper_receives_a_stage_object():
    # A plain function (outside a class) whose parameter is called `stage` or annotated with
    # a stage class would reach back into the stage: helpers take values and return values.
    # Only the pipeline (mcomp/run/), which runs the stages, holds stage objects.
    stage_classes = _stage_classes()
    offenders = []
    for folder in ("compressors", "mcomp"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "mcomp" / "run"):
                continue
            tree = ast.parse(path.read_text())
            methods = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if id(node) in methods:
                    continue
                for arg in node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    if arg.arg == "stage" or annotation.split(".")[-1] in stage_classes:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.name}({arg.arg})")
    assert offenders == []


def test_facts_between_stages_are_typed_fields_not_string_keys():
    from mcomp.stage import StageContext, StageFacts

    assert "shared" not in {f.name for f in fields(StageContext)}
    assert {f.name for f in fields(StageFacts)} == {"masks", "qat_ranges"}
    literal = [
        str(p.relative_to(ROOT))
        for folder in ("compressors", "mcomp")
        for p in (ROOT / folder).rglob("*.py")
        if "ctx.shared" in p.read_text() or '"sparsity_masks"' in p.read_text()
    ]
    assert literal == []


def test_training_options_are_declared_once():
    from mcomp.compressors.distill import DistillOptions
    from mcomp.compressors.finetune import FinetuneOptions
    from mcomp.compressors.prune.gradual import GradualOptions
    from mcomp.compressors.qat.stage import QatOptions
    from mcomp.training.options import TrainingOptions

    for options in (FinetuneOptions, DistillOptions, GradualOptions, QatOptions):
        assert issubclass(options, TrainingOptions)
        assert set(TrainingOptions.model_fields) <= set(options.model_fields)
    # the stage defaults that differ, as documented
    assert DistillOptions().epochs == 5 and GradualOptions().epochs == 8
    assert QatOptions().lr == 1e-4 and FinetuneOptions().epochs == 3
