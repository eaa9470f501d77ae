"""Read YAML safely and remember where every key stands, for error messages with line:column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mcomp.errors import RecipeError

KeyPath = tuple[str | int, ...]
Positions = dict[KeyPath, tuple[int, int]]


def read_yaml(path: Path) -> tuple[Any, Positions]:
    """Parse `path` with `yaml.safe_load` semantics; return the data and key positions (1-based)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe: {exc}", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(
            f"malformed YAML: {problem}",
            file=str(path),
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    positions: Positions = {}
    if node is not None:
        _walk(node, (), positions)
    return data, positions


def _walk(node: yaml.Node, path: KeyPath, positions: Positions) -> None:
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            mark = key_node.start_mark
            positions[path + (key,)] = (mark.line + 1, mark.column + 1)
            _walk(value_node, path + (key,), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), positions)


def position_of(positions: Positions, path: KeyPath) -> tuple[int | None, int | None]:
    """The line and column of `path`, or of its nearest ancestor that appears in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in positions:
            return positions[path[:end]]
    return None, None
