"""Checks on the input files a user names: a directory, a FIFO or a device is not a file."""

from __future__ import annotations

from pathlib import Path

from mcomp.errors import MCompError


def check_regular_file(path: Path, key: str, error: type[MCompError], what: str) -> None:
    """Raise `error` naming `key` unless `path` is a regular file; a missing path, a directory
    and a FIFO or device each get their own message (reading a FIFO would block, /dev/zero
    would never end). `what` names the kind of file expected ("model file", ".npz file")."""
    if not path.exists():
        raise error(f"{key}: file not found: {path}")
    if path.is_dir():
        raise error(f"{key}: {path} is a directory; name a {what}")
    if not path.is_file():
        raise error(
            f"{key}: {path} is not a regular file (a FIFO, socket or device); name a {what}"
        )
