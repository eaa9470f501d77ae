"""Read YAML safely and remember where every key stands, for error messages with line:column.

Safe also against hostile files, in time and memory linear in the file's size:

- aliases are allowed (a block of options reused with `&name` / `*name`, or merged with
  `<<: *name`), but the document they expand to may hold at most `MAX_VALUES` values: a
  "billion laughs" file of a few hundred bytes expands to 10^9 values, and everything after
  the parser (the schema, the reported recipe) walks the expanded tree;
- nesting deeper than `MAX_DEPTH` is refused before Python's stack runs out;
- a key given twice in one mapping is an error naming both lines (YAML keeps the last one
  silently, so `model:` written twice would run the second model);
- numbers like `1e-3` are floats, as in YAML 1.2 and JSON (PyYAML's YAML 1.1 reads them as
  strings, which the strict schema would then refuse).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mcomp.errors import RecipeError

KeyPath = tuple[str | int, ...]
Positions = dict[KeyPath, tuple[int, int]]

MAX_RECIPE_BYTES = 4 * 2**20
MAX_VALUES = 100_000  # after alias expansion; a large real recipe holds a few hundred
MAX_DEPTH = 64

FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Refusal(Exception):
    """Raised inside the loader; `parse_yaml` turns it into a RecipeError with a position."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader with a nesting bound, duplicate-key errors and YAML 1.2 exponent floats."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refusal(
                    f"nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of "
                    "mappings and lists",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = key_node.value
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    raise _Refusal(
                        f"duplicate key {key!r} (first at line {first}, again at line "
                        f"{key_node.start_mark.line + 1}); YAML would silently keep the "
                        "last one: remove one of them",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", FLOAT_WITHOUT_DOT, list("-+0123456789")
)


def read_yaml(path: Path) -> tuple[Any, Positions]:
    """Parse `path` with `yaml.safe_load` semantics; return the data and key positions (1-based)."""
    try:
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise RecipeError(f"the recipe path is {kind}; name a .yaml file", file=str(path))
        if path.exists() and path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(
                f"the recipe is larger than {MAX_RECIPE_BYTES // 2**20} MiB; a recipe names "
                "files, it does not hold data",
                file=str(path),
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe: {exc}", file=str(path)) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> tuple[Any, Positions]:
    """Parse YAML text (a file's, or a `--set` value) within the bounds of this module;
    errors name `source`."""
    _check_flow_depth(text, source)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_expansion(node)
        data = loader.construct_document(node)
    except _Refusal as exc:
        raise _located(str(exc), exc.mark, source) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise _located(
            f"malformed YAML: {problem}", getattr(exc, "problem_mark", None), source
        ) from None
    finally:
        loader.dispose()
    positions: Positions = {}
    _walk(node, (), positions)
    return data, positions


def _located(message: str, mark: yaml.Mark | None, source: str) -> RecipeError:
    """A file's error at LINE:COL; a one-line `--set` value's at its character."""
    if mark is None:
        return RecipeError(message, file=source)
    if source.startswith("--set "):
        return RecipeError(f"{message} (at character {mark.column + 1} of the value)", file=source)
    return RecipeError(message, file=source, line=mark.line + 1, column=mark.column + 1)


def _check_flow_depth(text: str, source: str) -> None:
    """Refuse `[[[[...` nested past MAX_DEPTH before PyYAML's scanner, which looks ahead
    through every open bracket (quadratic time: 2 s for 100 000 levels), sees it. Brackets in
    quotes and comments do not count; brackets in plain scalars (`a[0]`) close again."""
    depth, quote, line, line_start = 0, "", 1, 0
    previous = "\n"
    for index, char in enumerate(text):
        if char == "\n":
            line, line_start = line + 1, index + 1
            if quote == "#":
                quote = ""
        elif quote:
            if char == quote and quote != "#":
                quote = ""
        elif char in "'\"" and previous in " \t\n[{,:-":
            quote = char
        elif char == "#" and previous in " \t\n":
            quote = "#"
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(
                    f"nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of "
                    "mappings and lists",
                    file=source,
                    line=line,
                    column=index - line_start + 1,
                )
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char


def _check_expansion(root: yaml.Node) -> None:
    """Count the values the document expands to, each distinct node once (linear time); an
    alias counts its whole target again, as every later reader will see it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path from the root: met again = a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise _Refusal("an alias refers to a node that contains it", node.start_mark)
            if children:
                open_nodes.add(id(node))
                stack.append((node, True))
                stack.extend((c, False) for c in children if id(c) not in sizes)
                continue
        open_nodes.discard(id(node))
        total = 1 + sum(sizes[id(c)] for c in children)
        sizes[id(node)] = total
        if total > MAX_VALUES:
            raise _Refusal(
                f"the document expands to more than {MAX_VALUES} values (through aliases "
                "`*name`, or a very long list); write the values out, or keep large data "
                "in a data file",
                node.start_mark,
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _walk(node: yaml.Node, path: KeyPath, positions: Positions) -> None:
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key, str):
                continue  # a complex key (itself a mapping or list): no path can name it
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
