"""`mcomp validate`: the whole recipe checked without loading torch or running anything."""

from __future__ import annotations

from typing import Any

from mcomp.errors import DataError, ModelLoadError
from mcomp.recipe.load import load_recipe


def validate_recipe(name_or_path: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate schema, stage options and order, and that the named files exist."""
    loaded = load_recipe(name_or_path, overrides)
    recipe = loaded.recipe
    if recipe.model.path is not None and not (loaded.base_dir / recipe.model.path).is_file():
        raise ModelLoadError(f"model.path: file not found: {loaded.base_dir / recipe.model.path}")
    for split in ("train", "calibration", "eval"):
        spec = getattr(recipe.data, split)
        if (
            spec is not None
            and spec.path is not None
            and not (loaded.base_dir / spec.path).is_file()
        ):
            raise DataError(f"data.{split}.path: file not found: {loaded.base_dir / spec.path}")
    return {
        "file": str(loaded.file),
        "ok": True,
        "stages": [name for name, _ in loaded.stages],
        "recipe": loaded.resolved(),
    }
