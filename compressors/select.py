"""Choose layers by type and include/exclude glob patterns: the one module selection of
`prune`, `lowrank`, `cluster` and `mcomp sensitivity`."""

from __future__ import annotations

import fnmatch
from typing import Any

from mcomp.errors import StageError
from mcomp.model.module_names import strip_wrapper_prefix
from mcomp.progress import Progress


def layer_candidates(root, layer_types: list[str]) -> list[tuple[str, Any]]:
    """(name, module) of every module of `layer_types`, names without wrapper prefixes
    (`module.`, `_orig_mod.`), in `named_modules()` order. TorchScript modules and an
    exported program's submodules count by the layer they compute (`layer_kinds`)."""
    from mcomp.model.modes import layer_kinds

    kinds = layer_kinds(root)
    return [
        (strip_wrapper_prefix(n), m) for n, m in root.named_modules() if kinds.get(n) in layer_types
    ]


def select_layers(
    root,
    *,
    include: list[str],
    exclude: list[str],
    layer_types: list[str],
    label: str,
    progress: Progress | None = None,
    verb: str = "",
) -> list[tuple[str, Any]]:
    """Modules of `layer_types` whose names match `include` and none of `exclude`.

    With `progress`, a pattern matching no candidate is a warning; a model with no candidate
    at all, or none left after the patterns, is an error (`verb`, e.g. "prune", completes its
    message: "no layer left to prune")."""
    candidates = layer_candidates(root, layer_types)
    kinds = "/".join(layer_types)
    if not candidates and verb:
        raise StageError(
            f"{label}: the model has no {kinds} modules to {verb}; include other "
            "`layer_types`, or check `model.path` names the model you mean"
        )
    for pattern in include + exclude:
        if progress and not any(fnmatch.fnmatchcase(n, pattern) for n, _ in candidates):
            progress.warn(f"{label}: pattern {pattern!r} matches no {kinds} module")
    chosen = [
        (n, m)
        for n, m in candidates
        if any(fnmatch.fnmatchcase(n, p) for p in include)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]
    if not chosen:
        what = f"no layer left to {verb}" if verb else "no layer left"
        raise StageError(
            f"{label}: {what} after include/exclude; layers are: "
            + ", ".join(n for n, _ in candidates[:20])
        )
    return chosen
