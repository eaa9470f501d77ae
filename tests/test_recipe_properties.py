"""Property: whatever a recipe holds, `mcomp validate` answers through the error boundary.

Mutations of a valid recipe (values replaced by values of any type, keys dropped, added or
misspelt, values wrapped in lists), of its text (characters inserted, deleted, replaced) and
random `--set` overrides: the exit code is 0, 1 or 2; on 2 stderr is one `mcomp: error:` line;
never a traceback, never the "unexpected error" catch-all. In-process through click's
CliRunner, a bounded number of examples, no deadline (a shared CI core is slow).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcomp.cli.main import cli

BASE: dict[str, Any] = {
    "version": 1,
    "seed": 0,
    "model": {"builtin": "digits_cnn"},
    "data": {"train": "digits", "eval": "digits", "batch_size": 64},
    "runtime": {"threads": 1, "latency": {"batch": 8, "runs": 3}},
    "stages": [
        {"prune": {"sparsity": 0.5, "method": "magnitude"}},
        {"finetune": {"epochs": 1, "lr": 0.001}},
        {"quantize": {"mode": "static", "calibration": {"method": "minmax"}}},
        {"export": {}},
    ],
    "constraints": {"max_accuracy_drop": 0.01},
    "output": {"model": "model.onnx"},
}
FOLDER = Path(tempfile.mkdtemp(prefix="mcomp-properties-"))
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "static", "digits", "1e-3", "0.5", "true", "model.onnx", "a:b"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in the recipe (the places a mutation can hit)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, prefix + (index,))
    return found


def copy(node: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(node))


@st.composite
def mutated_recipes(draw) -> Any:
    recipe = copy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = paths(recipe)
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = recipe
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "misspell", "wrap"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif action == "misspell" and isinstance(parent, dict) and isinstance(key, str):
            parent[key[:-1] + draw(st.sampled_from("xs_"))] = parent.pop(key)
        elif action == "wrap":
            parent[key] = [parent[key]]
    return recipe


def check_boundary(result) -> None:
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    # the boundary exits on purpose; anything else escaping is a crash
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    assert "unexpected error" not in result.stderr, result.stderr
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        usage = lines and lines[0].startswith("Usage:")  # click's own usage errors
        assert usage or (len(lines) == 1 and lines[0].startswith("mcomp: error: ")), lines


def validate_text(text: str, *args: str):
    path = FOLDER / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return CliRunner().invoke(cli, ["validate", str(path), *args])


def test_the_base_recipe_is_valid():
    result = validate_text(yaml.safe_dump(BASE))
    assert result.exit_code == 0, result.stderr


@SETTINGS
@given(mutated_recipes())
def test_mutated_recipes_stay_inside_the_error_boundary(recipe):
    check_boundary(validate_text(yaml.safe_dump(recipe, allow_unicode=True)))


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(min_value=0, max_value=10_000),
            st.sampled_from(list(":-[]{}&*!|>'\"#%@`,? \t\n") + ["\x00", "é", "0", "a"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_text_mutations_stay_inside_the_error_boundary(edits):
    text = yaml.safe_dump(BASE, default_flow_style=None)
    for action, position, char in edits:
        at = position % (len(text) + 1)
        if action == "insert":
            text = text[:at] + char + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    check_boundary(validate_text(text))


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "seed",
                    "stages.0.prune.sparsity",
                    "stages.1.finetune",
                    "runtime.threads",
                    "model",
                    "data.eval",
                    "stages.9.x",
                    "constraints.min_speedup",
                    "a.b.c",
                ]
            ),  # fmt: skip
            st.sampled_from(["1", "-1", "true", "[1,2", "{a: *b}", "&a [*a]", "'x'", "", "1e9"]),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_set_overrides_stay_inside_the_error_boundary(overrides):
    args = [arg for key, value in overrides for arg in ("--set", f"{key}={value}")]
    check_boundary(validate_text(yaml.safe_dump(BASE), *args))
