"""Packaging guards: namespaced imports, lazy torch, a complete wheel, the registry."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mcomp.compressors.registry import STAGES, stage_class
from mcomp.model_state import ModelKind
from mcomp.stage import Stage, StageOptions

ROOT = Path(__file__).resolve().parents[1]
BARE_IMPORT = re.compile(r"^\s*(from|import)\s+(cli|compressors|engine|recipes)\b", re.M)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_registered_stage_imports_and_declares_its_contract(name):
    cls = stage_class(name)
    assert issubclass(cls, Stage)
    assert cls.name == name
    assert issubclass(cls.Options, StageOptions)
    assert cls.consumes in ModelKind and cls.produces in ModelKind


def test_no_bare_top_level_imports():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if ".ci-venv" not in p.parts and "venv" not in p.parts
                 and BARE_IMPORT.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("args", [["--help"], ["validate", "quickstart"], ["--version"],
                                  ["inspect", "--help"], ["eval", "--help"], ["bench", "--help"],
                                  ["compare", "--help"], ["init", "--help"]])
def test_fast_commands_do_not_import_torch_or_onnxruntime(args):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "mcomp", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "click" in imported  # the probe really records imports
    assert not {"torch", "onnxruntime", "onnx"} & imported


def test_schema_file_is_current():
    import json

    from mcomp.schema import recipe_json_schema

    shipped = json.loads((ROOT / "engine" / "recipe.schema.json").read_text())
    assert shipped == recipe_json_schema(), "regenerate: mcomp schema > engine/recipe.schema.json"


def test_wheel_holds_every_package_under_mcomp(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                             str(tmp_path), str(ROOT)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("mcomp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("mcomp/__init__.py", "mcomp/cli/main.py", "mcomp/compressors/prune.py",
                     "mcomp/compressors/registry.py", "mcomp/recipes/quickstart.yaml",
                     "mcomp/data/digits.npz", "mcomp/models/digits_cnn.pt",
                     "mcomp/recipe.schema.json"):
        assert expected in names
    for module in STAGES.values():
        assert module.split(":")[0].replace(".", "/") + ".py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mcomp"}
