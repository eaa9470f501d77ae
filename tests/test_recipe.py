"""Recipe loading: overrides, positions, did-you-mean, packaged recipes, resolution."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mcomp.cli.main import cli
from mcomp.errors import RecipeError
from mcomp.recipe.load import load_recipe

MINIMAL = """\
version: 1
model: {builtin: digits_cnn}
data: {train: digits, eval: digits}
stages:
  - prune: {sparsity: 0.5}
  - export: {}
"""


def test_packaged_quickstart_is_found_by_name():
    loaded = load_recipe("quickstart")
    assert loaded.packaged and [n for n, _ in loaded.stages] == [
        "prune",
        "finetune",
        "quantize",
        "export",
    ]


def test_set_overrides_parse_values_as_yaml(write_recipe):
    path = write_recipe(MINIMAL)
    loaded = load_recipe(
        str(path), ["stages.0.prune.sparsity=0.8", "seed=7", "runtime.latency.enabled=false"]
    )
    assert loaded.stages[0][1].sparsity == 0.8
    assert loaded.recipe.seed == 7 and loaded.recipe.runtime.latency.enabled is False


def test_set_override_errors_are_recipe_errors(write_recipe):
    path = write_recipe(MINIMAL)
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(str(path), ["stages.0.prune.sparsity"])
    with pytest.raises(RecipeError, match="no element 'stages.5'"):
        load_recipe(str(path), ["stages.5.prune.sparsity=0.1"])
    with pytest.raises(RecipeError, match=r"less than 1"):
        load_recipe(str(path), ["stages.0.prune.sparsity=1.5"])


def test_unknown_option_names_line_column_and_suggestion(write_recipe):
    path = write_recipe(MINIMAL.replace("sparsity: 0.5", "sparsty: 0.5"))
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:5:")
    assert "stages[0].prune.sparsty" in message and "did you mean 'sparsity'" in message


def test_stage_order_is_checked_before_anything_runs(write_recipe):
    path = write_recipe(
        MINIMAL.replace("  - export: {}\n", "").replace(
            "  - prune: {sparsity: 0.5}\n", "  - quantize: {}\n  - finetune: {}\n"
        )
    )
    with pytest.raises(RecipeError, match=r"stage 'finetune' works on torch models"):
        load_recipe(str(path))


def test_paths_are_relative_to_the_recipe_file(tmp_path, write_recipe):
    path = write_recipe(MINIMAL.replace("{builtin: digits_cnn}", "{path: models/m.pt}"))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert str(tmp_path / "models" / "m.pt") in result.output


def test_validate_accepts_every_shipped_recipe():
    from pathlib import Path

    for recipe in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")):
        result = CliRunner().invoke(cli, ["validate", str(recipe)])
        assert result.exit_code == 0, (recipe, result.output)


def test_schema_command_prints_json_schema_with_stage_options():
    import json

    result = CliRunner().invoke(cli, ["schema"])
    schema = json.loads(result.output)
    choices = schema["properties"]["stages"]["items"]["oneOf"]
    assert {next(iter(c["properties"])) for c in choices} >= {
        "prune",
        "finetune",
        "quantize",
        "export",
    }


def test_help_of_every_command_shows_an_example():
    assert {
        "run",
        "validate",
        "schema",
        "inspect",
        "eval",
        "bench",
        "compare",
        "init",
        "sensitivity",
    } <= set(cli.commands)
    for command in cli.commands:
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, command
