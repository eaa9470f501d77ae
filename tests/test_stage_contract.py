"""The stage contract as documented: the example stage of `mcomp/stage.py` and of
`compressors/README.md` ("Adding a stage") is registered as written, run through the real
pipeline, and its effect must be in the written model (a stage that edits the module in
place must never publish the baseline's cached export)."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mcomp.stage
from mcomp.compressors import registry
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "from mcomp.model.state import ModelKind, ModelState\n"
    "from mcomp.stage import Stage, StageContext, StageOptions\n"
)


def _docstring_example() -> str:
    doc = mcomp.stage.__doc__
    block = doc[doc.index("    class ScaleWeights") : doc.index("Register it with")]
    # inside the module docstring the class docstring is written with '''
    code = textwrap.dedent(block).strip().replace("'''", '"""')
    return HEADER + "\n\n" + code + "\n"


def _readme_example() -> str:
    text = (ROOT / "compressors" / "README.md").read_text()
    section = text[text.index("## Adding a stage") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_and_the_docstring_show_the_same_stage():
    assert _readme_example().strip() == _docstring_example().strip()


@pytest.fixture
def example_stage(monkeypatch):
    """The README's example stage, registered as `scale` for this test only."""
    module = types.ModuleType("mcomp_example_stage")
    exec(compile(_readme_example(), "compressors/README.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.STAGES, "scale", f"{module.__name__}:ScaleWeights")
    return module.ScaleWeights


def test_the_example_stage_changes_the_written_model(tmp_path, example_stage):
    # setup: the tiny MLP project; the only stage scales every weight and bias by 3
    write_mlp_project(tmp_path)
    recipe = mlp_recipe(tmp_path, "  - scale: {factor: 3.0}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import tinymodels

        original = tinymodels.mlp()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tinymodels", None)
    original.load_state_dict(torch.load(tmp_path / "mlp.pt", weights_only=True))
    x = np.load(tmp_path / "eval.npz")["x"][:16]
    # act
    result, _ = run_recipe(recipe, tmp_path / "out")
    # check: the written model computes the scaled network, not the baseline's export
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    written = session.run(None, {session.get_inputs()[0].name: x})[0]
    scaled = original.eval()
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(3.0)
        expected = scaled(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-4)
    baseline = result.report["baseline"]["metrics"]
    assert result.report["stages"][0]["type"] == "scale"
    assert result.report["stages"][0]["metrics"]["fidelity"] != baseline["fidelity"]
