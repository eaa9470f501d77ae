"""Packaging guards: namespaced imports, lazy torch, a complete wheel, the registry."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mcomp.compressors.registry import STAGES, stage_class
from mcomp.model.state import ModelKind
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
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if ".ci-venv" not in p.parts and "venv" not in p.parts and BARE_IMPORT.search(p.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate", "quickstart"],
        ["--version"],
        ["inspect", "--help"],
        ["eval", "--help"],
        ["bench", "--help"],
        ["compare", "--help"],
        ["init", "--help"],
    ],
)
def test_fast_commands_do_not_import_torch_or_onnxruntime(args):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcomp", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "click" in imported  # the probe really records imports
    assert not {"torch", "onnxruntime", "onnx"} & imported


def test_schema_file_is_current():
    import json

    from mcomp.recipe.json_schema import recipe_json_schema

    shipped = json.loads((ROOT / "mcomp" / "recipe" / "recipe.schema.json").read_text())
    assert shipped == recipe_json_schema(), (
        "regenerate: mcomp schema > mcomp/recipe/recipe.schema.json"
    )


# Where each source folder lands in the wheel (pyproject's package-dir).
WHEEL_ROOTS = {
    "mcomp": "mcomp",
    "cli": "mcomp/cli",
    "compressors": "mcomp/compressors",
    "recipes": "mcomp/recipes",
}
PACKAGE_DATA = ("*.yaml", "*.npz", "*.pt", "*.json", "*.txt")


def _expected_wheel_files() -> set[str]:
    """Every .py file and every package-data file of the source folders, as wheel paths."""
    expected = set()
    for folder, target in WHEEL_ROOTS.items():
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py" or any(path.match(p) for p in PACKAGE_DATA):
                expected.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return expected


def test_wheel_holds_every_source_and_data_file(tmp_path):
    # setup: build the wheel the way pip would install it
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("mcomp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # check: nothing left out (a subpackage missing from pyproject's list would be), nothing
    # at the top but mcomp
    expected = _expected_wheel_files()
    assert "mcomp/compressors/quantize/stage.py" in expected  # the walk found the packages
    assert "mcomp/recipe/recipe.schema.json" in expected
    assert sorted(expected - names) == []
    for module in STAGES.values():
        assert module.split(":")[0].replace(".", "/") + ".py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mcomp"}
