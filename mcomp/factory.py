"""Import a user's `package.module:function` with errors that say what to fix.

A recipe that names a factory, a metric or `python_path` is code: mcomp imports and runs it
(docs/security.md). What this module guarantees is narrower: the folders of `python_path` are
appended to `sys.path`, never put first, so a `yaml.py` or `onnxruntime.py` lying in them
cannot replace a library mcomp imports later; user code's `print()` goes to stderr, so
stdout carries only mcomp's result; and Hugging Face libraries run offline
(`HF_HUB_OFFLINE=1` unless the environment says otherwise), so a `from_pretrained` reads its
local folder and never a model hub (docs/hf.md).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
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


def keep_hubs_offline() -> None:
    """Hugging Face's hub client reads `HF_HUB_OFFLINE` once, when it is first imported: set
    it before any factory imports it, so that a name that is not a local folder fails instead
    of downloading (and running) something. A user who wants downloads says
    `HF_HUB_OFFLINE=0`; mcomp itself needs no network. Their progress bars ("Loading
    weights", "Writing model shards") go off the same way, read at the same import: they
    write to the terminal past mcomp's filter of library output (`--verbose` keeps them off;
    `HF_HUB_DISABLE_PROGRESS_BARS=0` brings them back)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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
    keep_hubs_offline()
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
    return _resolve_attribute(module, module_name, attr, key)


def _resolve_attribute(module: Any, module_name: str, attr: str, key: str) -> Callable[..., Any]:
    """`module.Class.method` for `attr` = "Class.method", naming the first part that is
    missing (with a close match when there is one)."""
    target = module
    walked = module_name  # what has resolved so far, as the user would write it
    for index, part in enumerate(attr.split(".")):
        try:
            with user_code():
                found = getattr(target, part, _MISSING)
        except Exception as exc:  # a lazy module (transformers) whose import of `part` fails
            raise MCompError(
                f"{key}: importing {part!r} from {walked!r} failed: {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from None
        if found is _MISSING:
            names = [name for name in _public_names(target) if not name.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MCompError(f"{key}: {walked!r} has no attribute {part!r}{hint}")
        target = found
        walked = f"{walked}{':' if index == 0 else '.'}{part}"
    if not callable(target):
        raise MCompError(
            f"{key}: {module_name}:{attr} is a {type(target).__name__}, not a function or class"
        )
    return target


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


_MISSING = object()


def _public_names(target: Any) -> list[str]:
    """The names `target` offers, for a did-you-mean; none when it cannot list them."""
    try:
        return list(dir(target))
    except Exception:
        return []


def factory_paths(args: dict, base_dir: Path, *, key: str, error: type[MCompError]) -> dict:
    """`args` with every string naming a file or folder next to the recipe made that path
    (a `from_pretrained` folder, a text file); a string written as a path (`./x`, `../x`,
    `/x`, `~/x`) that names nothing is an error here, as a Hugging Face library would
    otherwise take it for a model hub's name."""
    resolved = {}
    for name, value in args.items():
        if isinstance(value, str) and value:
            candidate = _existing(base_dir, value)
            if candidate is not None:
                value = str(candidate)
            elif value.startswith(PATH_PREFIXES):
                raise error(
                    f"{key}.{name}: {value} does not exist (paths are relative to the "
                    f"recipe's folder, {base_dir.resolve()}); make it, or fix the path"
                )
        resolved[name] = value
    return resolved


PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def _existing(base_dir: Path, value: str) -> Path | None:
    try:
        candidate = (base_dir / Path(value).expanduser()).resolve()
        return candidate if candidate.exists() else None
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, a loop
        return None
