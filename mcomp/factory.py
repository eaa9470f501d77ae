"""Import a user's `package.module:function` with errors that say what to fix."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcomp.errors import MCompError


def import_factory(
    ref: str, *, key: str, search_paths: list[Path] | None = None
) -> Callable[..., Any]:
    """Return the callable named by `ref` ("package.module:function")."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise MCompError(f"{key}: {ref!r} is not of the form 'package.module:function'")
    for folder in search_paths or []:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MCompError(
            f"{key}: cannot import {module_name!r} ({exc}); install it, or add its "
            "folder to `model.python_path`"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise MCompError(
            f"{key}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    target = getattr(module, attr, None)
    if not callable(target):
        raise MCompError(f"{key}: {module_name!r} has no callable {attr!r}")
    return target
