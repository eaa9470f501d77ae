"""The example recipes shipped with mcomp (`mcomp recipes`, `mcomp run <TAB>`): names,
stages and what each shows, read from the files themselves."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledRecipe:
    """One shipped recipe: `mcomp run NAME` runs it."""

    name: str
    path: Path
    description: str  # the first sentence of the file's leading comment
    stages: tuple[str, ...]


def bundled_names() -> list[str]:
    """Names of the shipped recipes, sorted (cheap: no file is parsed)."""
    folder = importlib.resources.files("mcomp.recipes")
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def bundled_recipes() -> list[BundledRecipe]:
    """Every shipped recipe with its description and stage names."""
    import yaml

    found = []
    for name in bundled_names():
        path = Path(str(importlib.resources.files("mcomp.recipes").joinpath(f"{name}.yaml")))
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        stages = tuple(
            next(iter(item)) for item in data.get("stages", []) if isinstance(item, dict)
        )
        found.append(BundledRecipe(name, path, _description(text), stages))
    return found


def _description(text: str) -> str:
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    words = " ".join(part for part in comment if part)
    end = words.find(". ")
    return words if end < 0 else words[: end + 1]
