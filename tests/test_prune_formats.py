"""Magnitude pruning and finetune/distill on a `.pt2` ExportedProgram and on TorchScript,
and a clear error at validate time for what those formats cannot do (channel pruning)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mcomp.cli.main import cli
from tests.helpers import run_recipe, write_mlp_project

RECIPE = """\
version: 1
seed: 0
model: {path: MODEL}
data: {train: train.npz, eval: eval.npz, batch_size: 64}
runtime: {threads: 1, latency: {enabled: false}}
stages:
STAGES"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The trained MLP of tests.helpers saved as .pt2, traced and scripted TorchScript."""
    folder = tmp_path_factory.mktemp("formats")
    write_mlp_project(folder)
    sys.path.insert(0, str(folder))
    from tinymodels import mlp

    model = mlp()
    model.load_state_dict(torch.load(folder / "mlp.pt", weights_only=True))
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.zeros(2, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "model.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still saves and loads
        torch.jit.save(torch.jit.trace(model, torch.zeros(2, 16)), str(folder / "traced.ts"))
        torch.jit.save(torch.jit.script(model), str(folder / "scripted.ts"))
    return folder


def write(folder: Path, model: str, stages: str) -> Path:
    path = folder / f"{model}.yaml"
    path.write_text(RECIPE.replace("MODEL", model).replace("STAGES", stages))
    return path


@pytest.mark.parametrize("model", ["model.pt2", "traced.ts", "scripted.ts"])
def test_prune_then_finetune_and_distill_keep_the_zeros(project, model):
    stages = (
        "  - prune: {sparsity: 0.6}\n"
        "  - finetune: {epochs: 2, lr: 0.003}\n"
        "  - distill: {epochs: 1, lr: 0.001}\n"
        "  - export: {}\n"
    )
    result, _ = run_recipe(write(project, model, stages), project / f"out_{model}")
    base, prune, finetune, distill, export = [result.report["baseline"], *result.report["stages"]]
    assert prune["details"]["pruned_weights"] == round(0.6 * (16 * 32 + 32 * 32 + 32 * 4))
    assert set(prune["details"]["layers"]) == {"0", "2", "4"}
    for entry in (finetune, distill, export):
        assert entry["metrics"]["nonzero_params"] == prune["metrics"]["nonzero_params"]
    assert finetune["details"]["train_loss"][-1] < finetune["details"]["train_loss"][0]
    assert export["metrics"]["metric"] >= base["metrics"]["metric"] - 0.05


def invoke(folder: Path, *args: str):
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(old)


@pytest.mark.parametrize("model", ["model.pt2", "traced.ts"])
@pytest.mark.parametrize(
    "stage",
    [
        "prune: {method: channel}",
        "prune: {method: layer, num_blocks: 1}",
        "prune: {sparsity: 0.5, reconstruct: true}",
        "lowrank: {}",
    ],
)
def test_structural_stages_are_refused_at_validate_time(project, model, stage):
    path = write(project, model, f"  - {stage}\n")
    result = invoke(project, "validate", str(path))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    kind = "ExportedProgram" if model.endswith("pt2") else "TorchScript"
    for text in (f"{model}", "stages[0]", kind, "state_dict", "factory"):
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("model", ["model.pt2", "scripted.ts"])
def test_init_writes_only_stages_that_run_on_the_format(project, model):
    out = project / f"init_{model}.yaml"
    result = invoke(
        project,
        "init",
        "--model",
        model,
        "--data",
        "train.npz",
        "--eval-data",
        "eval.npz",
        "--out",
        str(out),
        "--force",
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "channel/layer pruning, lowrank and QAT need the" in text
    checked = invoke(project, "validate", str(out))
    assert checked.exit_code == 0, checked.output
    assert "prune → finetune → quantize → export" in checked.output


@pytest.mark.parametrize("model", ["model.pt2", "traced.ts"])
def test_cluster_shares_the_weights_of_every_layer(project, model):
    result, _ = run_recipe(write(project, model, "  - cluster: {}\n"), project / f"cl_{model}")
    entry = result.report["stages"][0]
    assert len(entry["details"]["layers"]) == 3
    assert entry["metrics"]["metric"] >= result.report["baseline"]["metrics"]["metric"] - 0.05
