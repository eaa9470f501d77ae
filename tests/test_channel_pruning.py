"""Structured (channel) pruning on a residual + BatchNorm + concat + depthwise model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mcomp.errors import RecipeError, StageError
from tests.helpers import run_recipe

TESTS = Path(__file__).resolve().parent

RECIPE = f"""\
version: 1
seed: 0
model: {{path: net.pt, factory: "prunable_models:residual_concat_net",
        python_path: ["{TESTS}"]}}
data: {{train: {{builtin: digits, samples: 256}}, eval: {{builtin: digits, samples: 128}}}}
runtime: {{threads: 1, latency: {{runs: 3, warmup: 1, batch: 16}}}}
stages:
%s
"""


@pytest.fixture
def project(tmp_path):
    import sys

    sys.path.insert(0, str(TESTS))
    from prunable_models import residual_concat_net

    torch.save(residual_concat_net().state_dict(), tmp_path / "net.pt")
    return tmp_path


def write(project: Path, stages: str) -> Path:
    path = project / "recipe.yaml"
    path.write_text(RECIPE % stages)
    return path


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale"])
def test_channel_pruning_shrinks_params_macs_and_file(project, importance):
    recipe = write(
        project,
        f"  - prune: {{method: channel, sparsity: 0.5, "
        f"importance: {importance}}}\n  - export: {{}}\n",
    )
    result, _ = run_recipe(recipe, project / "out")
    base = result.report["baseline"]["metrics"]
    pruned = result.report["stages"][0]["metrics"]
    assert pruned["params"] < 0.5 * base["params"]
    assert pruned["macs"] < 0.5 * base["macs"]
    assert pruned["size_bytes"] < 0.6 * base["size_bytes"]
    # no zeros were added (only the BatchNorm biases of the untrained net are 0): the tensors
    # themselves shrank
    assert pruned["sparsity"] < base["sparsity"] + 0.02
    session = ort.InferenceSession(
        str(project / "out" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    out = session.run(None, {"x": np.zeros((2, 1, 8, 8), np.float32)})[0]
    assert out.shape == (2, 10)  # the classifier's outputs are never pruned


def test_target_macs_ratio_and_round_to(project):
    recipe = write(project, "  - prune: {method: channel, target_macs_ratio: 0.5, round_to: 4}\n")
    result, _ = run_recipe(recipe, project / "out")
    details = result.report["stages"][0]["details"]
    assert details["macs_after"] <= 0.5 * details["macs_before"]
    assert details["macs_after"] >= 0.3 * details["macs_before"]  # bisected, not overshot
    module_widths = [w for w in _conv_widths(project / "out" / "model.onnx") if w != 10]
    assert all(w % 4 == 0 for w in module_widths)


def test_exclude_keeps_a_layer_whole(project):
    recipe = write(project, "  - prune: {method: channel, sparsity: 0.5, exclude: ['branch_a']}\n")
    result, _ = run_recipe(recipe, project / "out")
    assert (
        result.report["stages"][0]["details"]["params_after"]
        < result.report["stages"][0]["details"]["params_before"]
    )


def test_channel_pruning_then_finetune_and_int8(project):
    recipe = write(
        project,
        "  - prune: {method: channel, sparsity: 0.3}\n"
        "  - finetune: {epochs: 1}\n  - quantize: {mode: static}\n",
    )
    result, _ = run_recipe(recipe, project / "out")
    kinds = [s["model_kind"] for s in result.report["stages"]]
    assert kinds == ["torch", "torch", "onnx"]


def test_magnitude_options_only_for_channel(project):
    recipe = write(project, "  - prune: {sparsity: 0.5, round_to: 8}\n")
    with pytest.raises(StageError, match="apply to `method: channel`"):
        run_recipe(recipe, project / "out")


def test_ratio_out_of_range_is_a_recipe_error(project):
    recipe = write(project, "  - prune: {method: channel, sparsity: 1.0}\n")
    with pytest.raises(RecipeError, match="sparsity"):
        run_recipe(recipe, project / "out")


def _conv_widths(path: Path) -> list[int]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [
        inits[n.input[1]].shape[0]
        for n in model.graph.node
        if n.op_type == "Conv" and n.input[1] in inits
    ]


def test_structurally_pruned_model_is_saved_as_a_reloadable_torch_program(project):
    # setup: channel pruning, saving the torch form beside the ONNX model
    (project / "recipe.yaml").write_text(
        RECIPE % "  - prune: {method: channel, sparsity: 0.5}\n"
        + "output: {torch_model: pruned.pt2}\n"
    )
    result, _ = run_recipe(project / "recipe.yaml", project / "out")
    saved = project / "out" / "pruned.pt2"
    assert result.report["artifacts"]["torch_model"] == str(saved)
    # act: a second recipe loads it without the original class (no factory, no python_path)
    (project / "reload.yaml").write_text(
        "model: {path: out/pruned.pt2}\n"
        "data: {eval: {builtin: digits, samples: 16}}\n"
        "runtime: {threads: 1, latency: {enabled: false}}\n"
        "stages: [{export: {}}]\n"
    )
    reloaded, _ = run_recipe(project / "reload.yaml", project / "out2")
    # check: same parameter count, and it exports and runs
    assert (
        reloaded.report["baseline"]["metrics"]["params"]
        == result.report["stages"][0]["metrics"]["params"]
    )
    session = ort.InferenceSession(
        str(project / "out2" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    first = ort.InferenceSession(
        str(project / "out" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], first.run(None, {"x": x})[0], atol=1e-5
    )
