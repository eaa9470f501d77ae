"""Gradual (AGP) pruning on the shared training loop, unstructured and structured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mcomp.compressors.prune.gradual import agp_sparsity
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project

TESTS = Path(__file__).resolve().parent


def test_agp_schedule_follows_the_cubic_formula():
    assert agp_sparsity(0.9, 0.0, 0, 8) == 0.0
    assert agp_sparsity(0.9, 0.0, 8, 8) == pytest.approx(0.9)
    assert agp_sparsity(0.9, 0.1, 4, 8) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    values = [agp_sparsity(0.8, 0.0, k, 10) for k in range(11)]
    assert values == sorted(values)  # monotone, fast at first then slower
    assert values[1] - values[0] > values[10] - values[9]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_gradual_magnitude_reaches_target_and_keeps_it(tmp_path, scope):
    write_mlp_project(tmp_path)
    recipe = mlp_recipe(
        tmp_path,
        f"  - prune: {{sparsity: 0.85, scope: {scope}, gradual: "
        "{steps: 4, epochs: 4, lr: 0.01}}\n"
        "  - finetune: {epochs: 1}\n",
    )
    result, _ = run_recipe(recipe, tmp_path / "out")
    prune, finetune = result.report["stages"]
    schedule = prune["details"]["schedule"]
    assert schedule[0] == 0.0 and schedule[-1] == pytest.approx(0.85, abs=1e-4)
    assert len(schedule) == 5 and schedule == sorted(schedule)
    weights = 16 * 32 + 32 * 32 + 32 * 4
    assert prune["details"]["pruned_weights"] == pytest.approx(0.85 * weights, abs=3)
    assert len(prune["details"]["train_loss"]) == 4
    assert finetune["metrics"]["nonzero_params"] == prune["metrics"]["nonzero_params"]


def test_gradual_magnitude_in_one_epoch_ends_at_the_target_not_at_its_dense_start(tmp_path):
    # one epoch: the schedule ends inside the only epoch, which is then the first candidate
    # for the best checkpoint; the model as it came in (dense) must never be one
    write_mlp_project(tmp_path)
    recipe = mlp_recipe(
        tmp_path, "  - prune: {sparsity: 0.85, gradual: {steps: 4, epochs: 1, lr: 0.01}}\n"
    )
    result, _ = run_recipe(recipe, tmp_path / "out")
    (prune,) = result.report["stages"]
    weights = 16 * 32 + 32 * 32 + 32 * 4
    dense = result.report["baseline"]["metrics"]["nonzero_params"]
    assert prune["metrics"]["nonzero_params"] == pytest.approx(dense - 0.85 * weights, abs=3)
    assert "start_eval_metric" not in prune["details"]


def test_gradual_channel_pruning_shrinks_step_by_step(tmp_path):
    sys.path.insert(0, str(TESTS))
    from prunable_models import residual_concat_net

    torch.save(residual_concat_net().state_dict(), tmp_path / "net.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""\
model: {{path: net.pt, factory: "prunable_models:residual_concat_net",
        python_path: ["{TESTS}"]}}
data: {{train: {{builtin: digits, samples: 128}}, eval: {{builtin: digits, samples: 64}}}}
runtime: {{threads: 1, latency: {{runs: 2, warmup: 1, batch: 8}}}}
stages:
  - prune: {{method: channel, sparsity: 0.5, gradual: {{steps: 3, epochs: 4}}}}
""")
    result, _ = run_recipe(recipe, tmp_path / "out")
    details = result.report["stages"][0]["details"]
    assert details["schedule"] == sorted(details["schedule"]) and len(details["schedule"]) == 3
    assert details["schedule"][-1] == pytest.approx(0.5)
    assert details["macs_after"] < 0.5 * details["macs_before"]
    assert (
        result.report["stages"][0]["metrics"]["macs"]
        < 0.5 * result.report["baseline"]["metrics"]["macs"]
    )
