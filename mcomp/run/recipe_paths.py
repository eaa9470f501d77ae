"""The file paths inside a resolved recipe: rewritten so that the copy in the output folder
runs from where it is, and digested for the resume cache's keys.

Paths in a recipe are relative to the recipe's folder; `recipe.resolved.yaml` lives in the
output folder, so each is rewritten relative to that folder (`../data/train.npz`), or kept
absolute where no relative path exists (another drive). Its `output.dir` is `.`: running it
again writes into the same folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# keys holding paths inside stage options (the distillation teacher's model, the prune
# stage's sensitivity table); the recipe's own sections are listed in `_top_level_paths`
STAGE_PATH_KEYS = ("path", "python_path", "sensitivity")
SPLITS = ("train", "calibration", "eval")


def path_slots(resolved: dict[str, Any]) -> Iterator[tuple[dict, str, int | None]]:
    """Every (container, key, list index) holding a path, except `output.dir`."""
    model = resolved.get("model") or {}
    yield from _slots(model, "path")
    yield from _slots(model, "python_path")
    for split in SPLITS:
        spec = (resolved.get("data") or {}).get(split)
        if isinstance(spec, dict):
            yield from _slots(spec, "path")
    for stage in resolved.get("stages") or []:
        yield from stage_path_slots(stage)


def stage_path_slots(node: Any) -> Iterator[tuple[dict, str, int | None]]:
    """Path slots anywhere in one stage's options (nested groups included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in STAGE_PATH_KEYS and isinstance(value, (str, list)):
                yield from _slots(node, key)
            else:
                yield from stage_path_slots(value)
    elif isinstance(node, list):
        for item in node:
            yield from stage_path_slots(item)


def _slots(container: dict, key: str) -> Iterator[tuple[dict, str, int | None]]:
    value = container.get(key)
    if isinstance(value, str):
        yield container, key, None
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield container, key, index


def map_paths(resolved: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """A copy of `resolved` with `change` applied to every path."""
    data = copy.deepcopy(resolved)
    for container, key, index in list(path_slots(data)):
        if index is None:
            container[key] = change(container[key])
        else:
            container[key][index] = change(container[key][index])
    return data


def rerunnable_recipe(resolved: dict[str, Any], *, base: Path, out: Path, source: str) -> str:
    """The resolved recipe as YAML text that runs from `out` (paths rewritten), with a header
    comment saying so; `base` is the folder the recipe's relative paths start from."""
    import yaml

    out_abs = Path(os.path.abspath(out))

    def relocate(path: str) -> str:
        target = Path(os.path.abspath(base / path))
        try:
            return Path(os.path.relpath(target, out_abs)).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            return str(target)

    data = map_paths(resolved, relocate)
    _relocate_factory_folders(data.get("model") or {}, base, relocate)
    data.setdefault("output", {})["dir"] = "."
    header = (
        f"# {source} as this run used it: defaults filled in, --set overrides applied.\n"
        "# Paths are relative to this file's folder; `mcomp run` on this file runs it again\n"
        "# into this folder (output.dir: .), `--resume` reusing the stages it can.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def _relocate_factory_folders(model: dict[str, Any], base: Path, relocate) -> None:
    """`model.factory_args` strings naming a file or folder next to the recipe (a
    `from_pretrained` folder) are paths too (mcomp.model.load.factory_paths); the others
    (a hub-style name, a number) stay as they are."""
    args = model.get("factory_args")
    if model.get("path") is not None or not isinstance(args, dict):
        return  # with `path`, factory_args are passed as written
    for key, value in args.items():
        if isinstance(value, str) and value and _exists(base / value):
            args[key] = relocate(value)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False
