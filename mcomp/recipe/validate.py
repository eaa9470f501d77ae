"""`mcomp validate`: the whole recipe checked without loading torch or running anything."""

from __future__ import annotations

from typing import Any

from mcomp.errors import DataError, ModelLoadError, RecipeError
from mcomp.paths import check_regular_file
from mcomp.recipe.load import load_recipe


def validate_recipe(name_or_path: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate schema, stage options and order, and that the named files exist."""
    loaded = load_recipe(name_or_path, overrides)
    recipe = loaded.recipe
    if recipe.model.path is not None:
        path = loaded.base_dir / recipe.model.path
        check_regular_file(path, "model.path", ModelLoadError, "model file")
        _check_format_limits(loaded, path)
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


def _check_format_limits(loaded, path) -> None:
    """A stage that needs layer modules on a .pt2 or TorchScript file fails here."""
    from mcomp.model.format_limits import file_kind, refusal

    kind = file_kind(path)
    if kind is None:
        return
    for index, (name, options) in enumerate(loaded.stages):
        reason = refusal(kind, name, options)
        if reason is not None:
            raise RecipeError(
                f"{loaded.recipe.model.path}: {reason}",
                file=str(loaded.file),
                key=f"stages[{index}].{name}",
            )
