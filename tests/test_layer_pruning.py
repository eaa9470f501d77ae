"""Layer pruning: whole residual blocks replaced by identity, by name or by least metric loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcomp.errors import StageError
from tests.helpers import run_recipe

TESTS = Path(__file__).resolve().parent
RECIPE = """\
model: {path: net.pt, factory: "mcomp.models.digits_resnet:digits_resnet"}
data: {train: {builtin: digits, samples: 64}, eval: {builtin: digits, samples: 64}}
runtime: {threads: 1, latency: {runs: 2, warmup: 1, batch: 8}}
stages:
  - prune: %s
  - export: {}
"""


@pytest.fixture
def project(tmp_path):
    from mcomp.models.digits_resnet import digits_resnet

    torch.manual_seed(0)  # an untrained net: which blocks matter is then arbitrary but fixed
    torch.save(digits_resnet().state_dict(), tmp_path / "net.pt")
    return tmp_path


def run(project: Path, prune: str):
    (project / "recipe.yaml").write_text(RECIPE % prune)
    return run_recipe(project / "recipe.yaml", project / "out")


def test_named_blocks_are_replaced_by_identity(project):
    result, _ = run(project, "{method: layer, blocks: ['layers.1', 'layers.3']}")
    base = result.report["baseline"]["metrics"]
    pruned = result.report["stages"][0]["metrics"]
    assert [b["block"] for b in result.report["stages"][0]["details"]["dropped_blocks"]] == [
        "layers.1",
        "layers.3",
    ]
    assert pruned["params"] < base["params"] and pruned["macs"] < base["macs"]


def test_blocks_chosen_by_least_metric_loss(project):
    result, _ = run(project, "{method: layer, num_blocks: 2}")
    dropped = result.report["stages"][0]["details"]["dropped_blocks"]
    assert len(dropped) == 2 and all("metric_after" in d for d in dropped)
    # blocks that change the shape (stride 2, new width) are never candidates
    assert not {"layers.2", "layers.4"} & {d["block"] for d in dropped}


def test_unknown_block_name_has_a_suggestion(project):
    with pytest.raises(StageError, match=r"did you mean 'layers.1'"):
        run(project, "{method: layer, blocks: ['layer.1']}")


def test_layer_method_needs_blocks(project):
    with pytest.raises(StageError, match="needs `blocks"):
        run(project, "{method: layer}")
