"""Every recipe in tests/data/recipes/invalid/ must be refused by `mcomp validate` with exit
code 2 and ONE readable line on stderr: `mcomp: error: FILE:LINE:COL: KEY: message`.

Each file starts with comment lines that say what is expected:

    # error: <substring the message must contain>     (one or more)
    # key: <the recipe key the message names>          (optional)
    # at: LINE:COL                                     (optional; 1-based, of the whole file)

To add a case, drop a new .yaml file there; no code change is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcomp.cli.main import cli

INVALID = Path(__file__).parent / "data" / "recipes" / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))


@dataclass
class Expected:
    errors: list[str]
    key: str | None
    at: tuple[int, int] | None


def expected(path: Path) -> Expected:
    errors: list[str] = []
    key = at = None
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        tag, _, value = line[2:].partition(": ")
        if tag == "error":
            errors.append(value)
        elif tag == "key":
            key = value
        elif tag == "at":
            row, col = value.split(":")
            at = (int(row), int(col))
    return Expected(errors, key, at)


def validate(path: Path, *args: str):
    return CliRunner().invoke(cli, ["validate", str(path), *args])


def test_the_invalid_recipe_folder_covers_the_spec():
    names = {p.stem for p in FILES}
    assert {
        "malformed_yaml",
        "not_a_mapping",
        "unknown_top_level_key",
        "unknown_stage",
        "unknown_stage_option",
        "option_wrong_type",
        "ratio_out_of_range",
        "prune_after_quantize",
        "model_both_path_and_builtin",
        "model_neither_path_nor_builtin",
        "unknown_metric",
        "output_model_not_onnx",
    } <= names
    for path in FILES:
        assert expected(path).errors, f"{path.name} has no `# error:` line"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_recipe_is_one_line_exit_2(path: Path):
    want = expected(path)
    result = validate(path)

    assert result.exit_code == 2, result.output
    # the error boundary exits on purpose; anything else escaping is a crash
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert "Traceback" not in result.stderr
    assert "unexpected error" not in message  # a typed error, not the catch-all
    assert message.startswith(f"mcomp: error: {path}")  # names the file as given
    for text in want.errors:
        assert text in message
    if want.at is not None:
        line, col = want.at
        location = f"{path.name}:{line}:{col}: "
        assert location in message, f"expected {location!r} in {message!r}"
        if want.key is not None:
            assert f"{location}{want.key}: " in message
    elif want.key is not None:
        assert f": {want.key}: " in message


def test_recipe_errors_that_come_from_yaml_content_carry_a_line():
    # Every case in the folder is about the file's content, so every one has a position.
    missing = [p.name for p in FILES if expected(p).at is None]
    assert missing == []


def test_positions_point_at_the_offending_key():
    # The data files' `# at:` lines are checked by hand once; guard them against drift: the
    # text at LINE:COL is the key that the message names (or the YAML problem's place).
    for path in FILES:
        want = expected(path)
        if want.key is None or want.at is None:
            continue
        last = want.key.split(".")[-1]
        if "[" in last:  # a list item: the position is its first key
            continue
        line, col = want.at
        text = path.read_text().splitlines()[line - 1][col - 1 :]
        assert text.startswith(last), (path.name, text, want.key)


def test_a_valid_recipe_next_to_them_passes(tmp_path: Path):
    # The cases fail for the reason they name, not for something shared by all of them.
    for path in FILES:
        if path.stem in ("unknown_stage_option", "ratio_out_of_range", "option_wrong_type"):
            fixed = (
                path.read_text()
                .replace("sparsty: 0.5", "sparsity: 0.5")
                .replace("sparsity: 1.5", "sparsity: 0.5")
                .replace("sparsity: high", "sparsity: 0.5")
            )
            good = tmp_path / path.name
            good.write_text(fixed)
            result = validate(good)
            assert result.exit_code == 0, (path.name, result.output)


def test_missing_recipe_file_is_exit_2_naming_it(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    result = validate(path)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"mcomp: error: {path}: recipe file not found"


def test_set_with_unknown_key_names_it_and_suggests(tmp_path: Path):
    recipe = INVALID / "unknown_stage_option.yaml"
    good = tmp_path / "r.yaml"
    good.write_text(recipe.read_text().replace("sparsty", "sparsity"))
    result = validate(good, "--set", "stages.0.prune.sparsty=0.9")
    assert result.exit_code == 2
    assert (
        "stages[0].prune.sparsty: unknown key 'sparsty' (did you mean 'sparsity'?)" in result.stderr
    )
    assert len(result.stderr.splitlines()) == 1
