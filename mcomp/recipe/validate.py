"""`mcomp validate`: the whole recipe checked without loading torch or running anything."""

from __future__ import annotations

from typing import Any

from mcomp.errors import DataError, ModelLoadError
from mcomp.paths import check_regular_file
from mcomp.recipe.load import load_recipe


def validate_recipe(name_or_path: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate schema, stage options and order, and that the named files exist."""
    loaded = load_recipe(name_or_path, overrides)
    recipe = loaded.recipe
    if recipe.model.path is not None:
        path = loaded.base_dir / recipe.model.path
        check_regular_file(path, "model.path", ModelLoadError, "model file")
    for split in ("train", "calibration", "eval"):
        spec = getattr(recipe.data, split)
        if spec is not None and spec.path is not None:
            path = loaded.base_dir / spec.path
            check_regular_file(path, f"data.{split}.path", DataError, ".npz file")
    return {
        "file": str(loaded.file),
        "ok": True,
        "stages": [name for name, _ in loaded.stages],
        "recipe": loaded.resolved(),
    }
