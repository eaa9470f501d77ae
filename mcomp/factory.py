"""Import a user's `package.module:function` with errors that say what to fix.

A recipe that names a factory, a metric or `python_path` is code: mcomp imports and runs it
(docs/security.md). What this module guarantees is narrower: the folders of `python_path` are
appended to `sys.path`, never put first, so a `yaml.py` or `onnxruntime.py` lying in them
cannot replace a library mcomp imports later; and user code's `print()` goes to stderr, so
stdout carries only mcomp's result.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mcomp.errors import MCompError


def extend_python_path(folders: Iterable[Path | str]) -> None:
    """Append `folders` to sys.path (after site-packages: they add modules, they do not
    shadow installed ones)."""
    for folder in folders:
        text = str(Path(folder).resolve())
        if text not in sys.path:
            sys.path.append(text)


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """While a user's factory, Dataset or metric runs, its stdout goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def import_factory(
    ref: str, *, key: str, search_paths: list[Path] | None = None
) -> Callable[..., Any]:
    """Return the callable named by `ref` ("package.module:function")."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise MCompError(f"{key}: {ref!r} is not of the form 'package.module:function'")
    extend_python_path(search_paths or [])
    try:
        with user_code():
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
    target = module
    for part in attr.split("."):  # `module:Class.from_pretrained`
        target = getattr(target, part, None)
    if not callable(target):
        raise MCompError(f"{key}: {module_name!r} has no callable {attr!r}")
    return target
