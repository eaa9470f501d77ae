"""The recipe reference (docs/recipe-reference.md), generated from the pydantic models.

Every key of the recipe and of every registered stage's options, with its type, default and
the field's description, so the documentation is the schema and cannot drift from it. A
test fails when the file in docs/ differs from what this prints; regenerate with

    python -m mcomp.recipe.reference > docs/recipe-reference.md
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

HEADER = """# Recipe reference

Generated from the recipe's pydantic models by `python -m mcomp.recipe.reference` (do not
edit by hand; a test checks it is current). Paths in `model`, `data` and stage options are
relative to the recipe file. Unknown keys are errors with a "did you mean" hint; numbers and
booleans are not coerced from strings. `mcomp schema` prints the same as JSON Schema.
How the parts of a recipe fit together is in [recipes.md](recipes.md); what each stage does
and reports, in [stages.md](stages.md).
"""


def render_reference() -> str:
    """The whole reference as Markdown."""
    from mcomp.compressors.registry import STAGES, stage_class
    from mcomp.recipe.schema import Recipe

    parts = [HEADER, "## Recipe\n", _table(Recipe, skip={"stages"})]
    parts.append(
        "`stages` is an ordered list of one-key mappings, `- prune: {sparsity: 0.5}`; each "
        "stage's options follow.\n"
    )
    for name in STAGES:
        cls = stage_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        parts += [f"## Stage `{name}`\n", f"{summary}\n" if summary else "", _table(cls.Options)]
    return "\n".join(part for part in parts if part)


def _table(model: type[BaseModel], skip: set[str] = frozenset()) -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [_row(*entry) for entry in _flatten(model, "", {}, skip)]
    return "\n".join(rows) + "\n"


def _flatten(
    model: type[BaseModel],
    prefix: str,
    seen: dict,
    skip=frozenset(),
    group: BaseModel | None = None,
):
    """(dotted key, field, default text, note) of `model`, nested option groups expanded
    below their key (a group met before is referred to, not repeated). `group` is the
    enclosing field's default instance, whose values are this group's defaults there (the
    qat stage's `quantize` group defaults to symmetric weights, unlike `quantize`'s own)."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = f"{prefix}{name}"
        default = _default(field) if group is None else _value_text(getattr(group, name))
        nested, suffix = _nested_model(field.annotation)
        if nested is not None and nested in seen:
            yield key, field, default, f"Keys as `{seen[nested]}`."
            continue
        yield key, field, default, ""
        if nested is not None:
            seen[nested] = f"{key}{suffix}.*"
            instance = _default_value(field) if group is None else getattr(group, name)
            inner = instance if isinstance(instance, nested) else None
            yield from _flatten(nested, f"{key}{suffix}.", seen, group=inner)


def _nested_model(annotation) -> tuple[type[BaseModel] | None, str]:
    """The options group inside `annotation` (`X`, `X | None`, `list[X]`), and the key
    suffix its fields go under (`[]` for a list)."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if typing.get_origin(candidate) is list:
            (item,) = typing.get_args(candidate) or (None,)
            if isinstance(item, type) and issubclass(item, BaseModel):
                return item, "[]"
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate, ""
    return None, ""


def _row(key: str, field, default: str, note: str) -> str:
    description = " ".join(part for part in (field.description or "", note) if part)
    description = description.replace("|", "\\|").replace("\n", " ")
    return f"| `{key}` | {_type_name(field.annotation)} | {default} | {description} |"


def _default_value(field) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _default(field) -> str:
    value = _default_value(field)
    return "required" if value is PydanticUndefined else _value_text(value)


def _value_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(group)"
    return f"`{_plain(value)}`"


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    return str(value)


def _accepts_string(model: type[BaseModel]) -> bool:
    """Whether a plain string validates as `model` (a shorthand such as a data split's
    `digits` or a path)."""
    try:
        model.model_validate("x")
    except ValidationError:
        return False
    return True


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation) -> str:
    """A reader's name for a type: `int`, `auto \\| minmax`, `list of str`, `number or null`."""
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(names)
        return f"{text} or null" if type(None) in typing.get_args(annotation) else text
    if origin is Literal:
        return " \\| ".join(_plain(v) for v in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list of {_type_name(item)}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "str or mapping" if _accepts_string(annotation) else "mapping"
    names = {bool: "bool", int: "int", float: "number", str: "str"}
    if annotation in names:
        return names[annotation]
    return "any" if annotation is Any else getattr(annotation, "__name__", str(annotation))


if __name__ == "__main__":
    print(render_reference(), end="")
