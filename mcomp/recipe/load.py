"""Load, override and validate a recipe completely before anything runs."""

from __future__ import annotations

import difflib
import importlib.resources
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mcomp.errors import RecipeError
from mcomp.recipe.schema import Recipe
from mcomp.recipe.yaml_positions import (
    KeyPath,
    Positions,
    parse_yaml,
    position_of,
    read_yaml,
)


@dataclass
class LoadedRecipe:
    """A validated recipe with its stages' typed options and where it came from."""

    recipe: Recipe
    stages: list[tuple[str, BaseModel]]
    file: Path
    base_dir: Path
    packaged: bool = False

    def resolved(self) -> dict[str, Any]:
        """The recipe as it will run: defaults filled in, overrides applied (JSON-ready)."""
        data = self.recipe.model_dump(mode="json")
        data["stages"] = [{name: opts.model_dump(mode="json")} for name, opts in self.stages]
        return data


def find_recipe(name_or_path: str) -> tuple[Path, bool]:
    """A recipe path, or the name of one shipped with mcomp (`quickstart`)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return path, False
    packaged = importlib.resources.files("mcomp.recipes").joinpath(f"{name_or_path}.yaml")
    if packaged.is_file():
        return Path(str(packaged)), True
    from mcomp.recipe.bundled import bundled_names

    names = bundled_names()
    raise RecipeError(
        f"no such file, and no bundled recipe of that name{_did_you_mean(name_or_path, names)}"
        f"; bundled recipes: {', '.join(names)} (`mcomp recipes` describes them)",
        file=name_or_path,
    )


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Read, apply `--set key=value` overrides, validate schema, stage options and order."""
    path, packaged = find_recipe(name_or_path)
    data, positions = read_yaml(path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        line, col = positions.get((), (1, 1))  # where the document starts (after comments)
        raise RecipeError(
            f"a recipe must be a mapping of keys like `version: 1` (got {got})",
            file=str(path),
            line=line,
            column=col,
        )
    where = Where(str(path), positions)
    for override in overrides:
        where.overrides[apply_override(data, override, file=str(path))] = override
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _recipe_error(exc, Recipe, (), where) from None
    stages = [_validate_stage(item, index, where) for index, item in enumerate(recipe.stages)]
    loaded = LoadedRecipe(
        recipe=recipe, stages=stages, file=path, base_dir=path.resolve().parent, packaged=packaged
    )
    check_stage_order(loaded, where)
    return loaded


@dataclass
class Where:
    """How to place an error: the recipe file and its key positions, and the `--set`
    overrides by the key path they set (an error there names the command line instead)."""

    file: str
    positions: Positions
    overrides: dict[KeyPath, str] = field(default_factory=dict)

    def error(self, message: str, loc: KeyPath, key: str | None = None) -> RecipeError:
        """A RecipeError at `loc`: at the `--set` that wrote it or a key above it, else at
        its line in the file."""
        for end in range(len(loc), 0, -1):
            override = self.overrides.get(loc[:end])
            if override is not None:
                return RecipeError(message, file=f"--set {override}", key=key)
        if loc not in self.positions:  # a key that only a --set below it created
            for path, override in self.overrides.items():
                if path[: len(loc)] == loc:
                    return RecipeError(message, file=f"--set {override}", key=key)
        line, col = position_of(self.positions, loc)
        return RecipeError(message, file=self.file, key=key, line=line, column=col)


def apply_override(data: dict[str, Any], override: str, *, file: str) -> KeyPath:
    """Set `a.b.0.c=value` in `data`; the value is parsed as YAML (`0.7`, `true`, `[1, 2]`).
    Returns the key path it set."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise RecipeError(
            f"--set {override!r}: expected KEY=VALUE, e.g. stages.0.prune.sparsity=0.7", file=file
        )
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        try:
            nxt = target[part]
        except (KeyError, IndexError, TypeError):
            if isinstance(target, dict) and isinstance(part, str):
                nxt = target[part] = {}
            else:
                where = ".".join(map(str, parts[: depth + 1]))
                raise RecipeError(
                    f"--set {override!r}: no element {where!r} in the recipe", file=file
                ) from None
        target = nxt
    value, _ = parse_yaml(raw, f"--set {override}")
    try:
        target[parts[-1]] = value
    except (IndexError, TypeError):
        raise RecipeError(f"--set {override!r}: cannot set {key!r} here", file=file) from None
    return tuple(parts)


def _validate_stage(item: dict[str, Any], index: int, where: Where) -> tuple[str, BaseModel]:
    from mcomp.compressors.registry import STAGES, stage_class

    at: KeyPath = ("stages", index)
    if len(item) != 1:
        raise where.error(
            "each stage is a one-key mapping like `- prune: {sparsity: 0.5}`",
            at,
            f"stages[{index}]",
        )
    name, options = next(iter(item.items()))
    if name not in STAGES:
        raise where.error(
            f"unknown stage {name!r}{_did_you_mean(name, STAGES)}; stages are: "
            + ", ".join(STAGES),
            at + (name,),
            f"stages[{index}]",
        )
    cls = stage_class(name)
    try:
        return name, cls.Options.model_validate(options or {})
    except ValidationError as exc:
        raise _recipe_error(exc, cls.Options, at + (name,), where) from None


def check_stage_order(loaded: LoadedRecipe, where: Where) -> None:
    """Reject stages that need torch once the model is ONNX (known before anything runs)."""
    from mcomp.compressors.registry import stage_class
    from mcomp.model.state import ModelKind

    is_onnx = _model_is_onnx(loaded)
    kind = ModelKind.ONNX if is_onnx else ModelKind.TORCH
    for index, (name, _) in enumerate(loaded.stages):
        cls = stage_class(name)
        if cls.consumes == ModelKind.TORCH and kind == ModelKind.ONNX:
            why = (
                "the model file is ONNX"
                if index == 0 or is_onnx
                else "an earlier stage turned the model into ONNX"
            )
            raise where.error(
                f"stage {name!r} works on torch models, but {why}; put it "
                "before quantize/export, or start from a torch model",
                ("stages", index, name),
                f"stages[{index}].{name}",
            )
        if cls.produces != ModelKind.ANY:
            kind = cls.produces


def _model_is_onnx(loaded: LoadedRecipe) -> bool:
    """The recipe's `model.format`, else the file's content as `load_model` will detect it (a
    state_dict named .onnx is torch, an ONNX file named .bin is not); the name if unreadable."""
    from mcomp.errors import MCompError
    from mcomp.model.load import detect_format

    spec = loaded.recipe.model
    if spec.format != "auto":
        return spec.format == "onnx"
    named_onnx = (spec.path or "").lower().endswith(".onnx")
    path = loaded.base_dir / (spec.path or "")
    if spec.path is None or not path.is_file():
        return named_onnx
    try:
        return detect_format(path) == "onnx"
    except (MCompError, OSError):
        # Unreadable: not known to be ONNX, so no stage-order error claims it is one;
        # load_model reports the damaged file before any stage runs.
        return False


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _recipe_error(
    exc: ValidationError, model: type[BaseModel], prefix: KeyPath, where: Where
) -> RecipeError:
    errors = exc.errors()
    # A misspelt key also makes the real one "missing": report the unknown key (with its
    # did-you-mean) rather than the "Field required" it causes.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc: KeyPath = prefix + tuple(p for p in first["loc"] if not _is_union_tag(p))
    if first["type"] == "extra_forbidden":
        known = _known_keys(model.model_json_schema(), loc[len(prefix) : -1])
        message = f"unknown key {loc[-1]!r}{_did_you_mean(loc[-1], known)}"
        if known:
            message += "; allowed: " + ", ".join(sorted(known))
    else:
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] not in ("missing",) and "input" in first:
            message += f" (got {_short_repr(first['input'])})"
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more error(s)]"
    return where.error(message, loc, _format_key(loc))


def _short_repr(value: Any, limit: int = 80) -> str:
    """The bad value as the user wrote it, cut short: a 100 000-item list is one line too."""
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 6
    short.maxlevel = 3
    return short.repr(value)


def _is_union_tag(part: str | int) -> bool:
    # pydantic puts the chosen union member in the location, e.g. ('threads', 'int').
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool") or part.startswith(("literal[", "function-"))
    )


def _known_keys(schema: dict[str, Any], loc: KeyPath) -> list[str]:
    """Keys allowed at `loc`, found by walking the JSON Schema (follows $ref, items, anyOf)."""
    defs = schema.get("$defs", {})

    def deref(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        return node

    def candidates(node: dict[str, Any]) -> list[dict[str, Any]]:
        node = deref(node)
        nodes = [node]
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                nodes.extend(candidates(sub))
        return nodes

    current = [schema]
    for part in loc:
        nxt = []
        for node in (n for c in current for n in candidates(c)):
            if isinstance(part, int) and "items" in node:
                nxt.append(node["items"])
            elif isinstance(part, str) and part in node.get("properties", {}):
                nxt.append(node["properties"][part])
        current = nxt
    return sorted({k for c in current for n in candidates(c) for k in n.get("properties", {})})


def _format_key(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
