"""The recipe's JSON Schema, stage options included (for editors' YAML completion)."""

from __future__ import annotations

from typing import Any

from mcomp.recipe.schema import Recipe


def recipe_json_schema() -> dict[str, Any]:
    """Recipe schema where each `stages` item is one of the registered stages' options."""
    from mcomp.compressors.registry import STAGES, stage_class

    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    choices = []
    for name in STAGES:
        options = stage_class(name).Options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(options.pop("$defs", {}))
        choices.append(
            {
                "type": "object",
                "properties": {name: {"anyOf": [options, {"type": "null"}]}},
                "required": [name],
                "additionalProperties": False,
            }
        )
    schema["properties"]["stages"]["items"] = {"oneOf": choices}
    _allow_split_shorthand(defs)
    _allow_switch_shorthand(defs)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mcomp recipe"
    return schema


def _allow_split_shorthand(defs: dict[str, Any]) -> None:
    """A data split may be written as a string (`digits` or a path): SplitSpec's
    before-validator accepts it, but pydantic's schema shows only the mapping."""
    shorthand = {"type": "string", "description": "`digits` or a path to an .npz file"}
    for prop in defs["DataSpec"]["properties"].values():
        refs = prop.get("anyOf", [])
        if {"$ref": "#/$defs/SplitSpec"} in refs and shorthand not in refs:
            refs.insert(1, shorthand)


SWITCHED = ("EqualizationOptions", "SmoothQuantOptions")


def _allow_switch_shorthand(defs: dict[str, Any]) -> None:
    """`equalization: true` (false, auto) stands for `{enabled: ...}`: the quantize
    options' before-validator accepts it, but pydantic's schema shows only the mapping."""
    for definition in defs.values():
        for prop in definition.get("properties", {}).values():
            ref = prop.get("$ref", "").removeprefix("#/$defs/")
            if ref in SWITCHED:
                del prop["$ref"]
                prop["anyOf"] = [
                    {"$ref": f"#/$defs/{ref}"},
                    {"type": "boolean"},
                    {"const": "auto", "type": "string"},
                ]
