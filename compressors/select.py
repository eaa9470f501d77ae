"""Choose layers by type and include/exclude glob patterns (used by `lowrank` and `cluster`)."""

from __future__ import annotations

import fnmatch
from typing import Any

from mcomp.errors import StageError
from mcomp.model.module_names import strip_wrapper_prefix
from mcomp.progress import Progress


def select_layers(
    root,
    *,
    include: list[str],
    exclude: list[str],
    layer_types: list[str],
    label: str,
    progress: Progress | None = None,
) -> list[tuple[str, Any]]:
    """Modules of `layer_types` whose names match `include` and none of `exclude`.

    Names have wrapper prefixes (`module.`, `_orig_mod.`) stripped. With `progress`, a pattern
    matching no candidate is a warning; no layer left is an error.
    """
    candidates = [
        (strip_wrapper_prefix(n), m)
        for n, m in root.named_modules()
        if type(m).__name__ in layer_types
    ]
    for pattern in include + exclude:
        if progress and not any(fnmatch.fnmatchcase(n, pattern) for n, _ in candidates):
            progress.warn(f"{label}: pattern {pattern!r} matches no {'/'.join(layer_types)} module")
    chosen = [
        (n, m)
        for n, m in candidates
        if any(fnmatch.fnmatchcase(n, p) for p in include)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]
    if not chosen:
        raise StageError(
            f"{label}: no layer left after include/exclude; layers are: "
            + ", ".join(n for n, _ in candidates[:20])
        )
    return chosen
