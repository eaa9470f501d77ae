"""Sensitivity analysis (`mcomp sensitivity`) and sensitivity-guided pruning."""

from __future__ import annotations

import csv
import json

import pytest

from mcomp.compressors.prune.sensitivity import allocate_sparsity
from mcomp.errors import StageError
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project


def points(ratios: list[float], drops: list[float]) -> list[dict]:
    return [{"ratio": r, "drop": d} for r, d in zip(ratios, drops, strict=True)]


def analysis(drops_a: list[float], drops_b: list[float]) -> dict:
    ratios = [0.2, 0.5, 0.8]
    return {
        "layers": {
            "a": {"params": 1000, "points": points(ratios, drops_a)},
            "b": {"params": 1000, "points": points(ratios, drops_b)},
        }
    }


def test_sensitive_layers_get_less_sparsity_for_the_same_mean():
    table = analysis([0.0, 0.05, 0.4], [0.0, 0.0, 0.01])  # a is sensitive, b is not
    amounts = allocate_sparsity(table, 0.6, ["a", "b"])
    assert amounts["a"] < 0.6 < amounts["b"]
    assert (amounts["a"] + amounts["b"]) / 2 == pytest.approx(0.6, abs=1e-6)


def test_sensitivity_command_writes_json_csv_and_png(tmp_path, run_mcomp):
    write_mlp_project(tmp_path)
    recipe = mlp_recipe(tmp_path, "  - prune: {sparsity: 0.5, exclude: ['4']}\n")
    result = run_mcomp(
        "sensitivity",
        str(recipe),
        "--ratios",
        "0.3,0.6,0.9",
        "--out",
        str(tmp_path / "sens"),
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert set(data["layers"]) == {"0", "2"}  # exclude is respected
    assert [p["ratio"] for p in data["layers"]["0"]["points"]] == [0.3, 0.6, 0.9]
    assert data == json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    rows = list(csv.DictReader((tmp_path / "sens" / "sensitivity.csv").open()))
    assert len(rows) == 6 and {"layer", "ratio", "drop"} <= set(rows[0])
    assert (tmp_path / "sens" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prune_guided_by_sensitivity_keeps_the_overall_target(tmp_path):
    write_mlp_project(tmp_path)
    (tmp_path / "sensitivity.json").write_text(json.dumps(analysis_for_mlp()))
    recipe = mlp_recipe(tmp_path, "  - prune: {sparsity: 0.6, sensitivity: sensitivity.json}\n")
    result, _ = run_recipe(recipe, tmp_path / "out")
    layers = result.report["stages"][0]["details"]["layers"]
    assert layers["0"] < layers["2"]  # layer 0 was declared sensitive
    weights = 16 * 32 + 32 * 32 + 32 * 4
    pruned = result.report["stages"][0]["details"]["pruned_weights"]
    assert pruned == pytest.approx(0.6 * weights, rel=0.02)


def test_missing_sensitivity_file_fails_before_any_work(tmp_path):
    write_mlp_project(tmp_path)
    recipe = mlp_recipe(
        tmp_path, "  - finetune: {epochs: 1}\n  - prune: {sparsity: 0.6, sensitivity: nope.json}\n"
    )
    with pytest.raises(StageError, match="run it first"):
        run_recipe(recipe, tmp_path / "out")


def analysis_for_mlp() -> dict:
    ratios = [0.3, 0.6, 0.9]
    return {
        "layers": {
            "0": {"params": 512, "points": points(ratios, [0.01, 0.2, 0.5])},
            "2": {"params": 1024, "points": points(ratios, [0.0, 0.0, 0.02])},
            "4": {"params": 128, "points": points(ratios, [0.0, 0.01, 0.05])},
        }
    }
