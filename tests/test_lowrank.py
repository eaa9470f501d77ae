"""Low-rank factorization (`lowrank` stage) on tiny real models."""

from __future__ import annotations

import pytest
import torch

from mcomp.compressors.lowrank import factorize, full_rank
from mcomp.errors import RecipeError, StageError
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project

NO_LATENCY = "runtime: {threads: 1, latency: {enabled: false}}\n"


@pytest.fixture
def project(tmp_path):
    write_mlp_project(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "layer, shape",
    [
        (torch.nn.Linear(20, 12), (5, 20)),
        (torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), (2, 3, 9, 9)),
        (torch.nn.Conv2d(6, 4, (3, 1), dilation=2, bias=False), (2, 6, 7, 7)),
    ],
)
def test_svd_at_full_rank_reproduces_the_layer(layer, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    pair = factorize(layer, full_rank(layer))
    with torch.no_grad():
        assert torch.allclose(pair(x), layer(x), atol=1e-5)
        # a lower rank is an approximation, not the same layer
        assert not torch.allclose(factorize(layer, 1)(x), layer(x), atol=1e-3)


def test_rank_ratio_reduces_params_and_macs_and_skips_layers_that_would_grow(project):
    # setup: Linear 16->32, 32->32, 32->4; at rank_ratio 0.75 only the last one shrinks
    # (rank 3: 3 * (32 + 4) = 108 < 128), the others would grow
    recipe = mlp_recipe(
        project,
        "  - lowrank: {rank_ratio: 0.75, exclude: ['nope'], keep_output_layer: false}\n",
        extra=NO_LATENCY,
    )
    # act
    result, progress = run_recipe(recipe, project / "out")
    # check
    entry, base = result.report["stages"][0], result.report["baseline"]["metrics"]
    details = entry["details"]
    assert set(details["skipped"]) == {"0", "2"}
    assert details["layers"]["4"]["rank"] == 3 and details["layers"]["4"]["full_rank"] == 4
    assert base["params"] - entry["metrics"]["params"] == 128 - 108
    assert base["macs"] - entry["metrics"]["macs"] == 128 - 108
    assert any("'nope'" in w for w in progress.warnings)


def test_output_layer_is_kept_by_default_and_named_when_nothing_is_left(project):
    # setup: Linear 16->32, 32->32, 32->4 at half their parameters
    recipe = mlp_recipe(project, "  - lowrank: {params_ratio: 0.5}\n", extra=NO_LATENCY)
    # act
    result, _ = run_recipe(recipe, project / "out")
    # check: the hidden layers are factorized (floor(0.5 * 512 / 48) = 5, 0.5 * 1024 / 64 = 8),
    # the output layer '4' is left as it was
    details = result.report["stages"][0]["details"]
    assert {n: v["rank"] for n, v in details["layers"].items()} == {"0": 5, "2": 8}
    assert details["skipped"] == {"4": "output layer (keep_output_layer: true)"}
    assert details["params_after"] == 5 * 48 + 32 + 8 * 64 + 32
    # only the output layer would shrink at rank_ratio 0.75, and it is kept: an error naming it
    recipe = mlp_recipe(project, "  - lowrank: {rank_ratio: 0.75}\n", extra=NO_LATENCY)
    with pytest.raises(StageError, match=r"4: output layer.*keep_output_layer: false"):
        run_recipe(recipe, project / "out2")


def test_conv_and_linear_factorized_on_the_digits_cnn(tmp_path):
    # setup: conv "2" (32 x 16*3*3, full rank 32) and Linear "6" (64 x 512) at half rank
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "version: 1\nmodel: {builtin: digits_cnn}\n"
        "data: {train: {builtin: digits, samples: 200}, "
        "eval: {builtin: digits, samples: 120}}\n"
        + NO_LATENCY
        + "stages:\n  - lowrank: {rank_ratio: 0.5, include: ['2', '6']}\n"
        "  - finetune: {epochs: 1}\n"
    )
    # act
    result, _ = run_recipe(recipe, tmp_path / "out")
    # check
    base = result.report["baseline"]["metrics"]
    lowrank, finetune = result.report["stages"]
    conv, linear = lowrank["details"]["layers"]["2"], lowrank["details"]["layers"]["6"]
    assert conv["rank"] == 16 and linear["rank"] == 32
    assert conv["params_after"] == 16 * (32 + 144) + 32
    assert conv["macs_before"] == 32 * 144 * 64 and conv["macs_after"] == 16 * (32 + 144) * 64
    assert linear["macs_after"] == 32 * (64 + 512)
    saved_macs = sum(v["macs_before"] - v["macs_after"] for v in (conv, linear))
    assert base["macs"] - lowrank["metrics"]["macs"] == saved_macs
    assert lowrank["metrics"]["params"] == base["params"] - sum(
        v["params_before"] - v["params_after"] for v in (conv, linear)
    )
    assert finetune["metrics"]["metric"] > 0.9


def test_energy_keeps_the_asked_share_of_singular_values(project):
    recipe = mlp_recipe(project, "  - lowrank: {energy: 0.6, include: ['2']}\n", extra=NO_LATENCY)
    result, _ = run_recipe(recipe, project / "out")
    layer = result.report["stages"][0]["details"]["layers"]["2"]
    assert layer["energy_kept"] >= 0.6 and layer["rank"] < 32


def test_rank_above_a_layers_limit_or_zero_is_an_error(project):
    recipe = mlp_recipe(
        project, "  - finetune: {epochs: 1}\n  - lowrank: {rank: 20}\n", extra=NO_LATENCY
    )
    with pytest.raises(StageError, match=r"rank 20 is above the limit 16 of layer '0'"):
        run_recipe(recipe, project / "out")
    assert not (project / "out").exists()
    recipe = mlp_recipe(project, "  - lowrank: {rank: 0}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.lowrank\.rank.*greater than or equal"):
        run_recipe(recipe, project / "out")
    recipe = mlp_recipe(project, "  - lowrank: {rank: 2, energy: 0.5}\n")
    with pytest.raises(RecipeError, match="give one of"):
        run_recipe(recipe, project / "out")
