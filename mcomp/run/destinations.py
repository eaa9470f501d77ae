"""Where `--report` and `--summary-md` go, decided and checked before the first stage.

    -                          stdout (the CLI prints it)
    a path in the output folder  part of the output set (switched in with it)
    a regular file or new path   written atomically (temp file + rename); through a
                                 symlink, the link's target is replaced, the link stays
    a device, FIFO or /dev, /proc path (/dev/stdout)
                                 written in place, never renamed over
A folder, a socket, or a file that would replace one of the run's own outputs is refused
with exit 2 before any work.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mcomp.atomic import remove_stale_temp_files, stage_bytes
from mcomp.errors import OutputError

_SPECIAL_ROOTS = ("/dev/", "/proc/")


@dataclass
class Destination:
    """One extra output: what the option said and where the bytes go."""

    option: str  # "--report"
    given: str
    kind: str  # "stdout" | "set" | "file" | "stream"
    target: Path  # "set": the name inside the output folder; else the real path
    staged: Path | None = None  # "file": the temp file beside the target, until renamed


def plan_destination(option: str, given: Path, out: Path, own_files: set[str]) -> Destination:
    """Classify and check one destination; OutputError for one that cannot work."""
    text = str(given)
    if text == "-":
        return Destination(option, text, "stdout", Path("-"))
    try:
        info = os.stat(given)  # follows symlinks: the target decides
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"{option} {given}: {exc.strerror or exc}") from None
    real = Path(os.path.realpath(given))
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{option} {given}: is a folder; name a file in it")
    if info is not None and stat.S_ISSOCK(info.st_mode):
        raise OutputError(f"{option} {given}: is a socket; name a file or '-' (stdout)")
    special = any(str(hop).startswith(_SPECIAL_ROOTS) for hop in _link_chain(Path(text)))
    if info is not None and (not stat.S_ISREG(info.st_mode) or special):
        return Destination(option, text, "stream", real)
    out_real = out.resolve()
    if real.parent == out_real or out_real in real.parents:
        name = real.relative_to(out_real).as_posix()
        if name in own_files:
            raise OutputError(
                f"{option} {given}: would replace the run's own {name}; choose another name"
            )
        return Destination(option, text, "set", Path(name))
    _check_parent(option, given, real.parent)
    return Destination(option, text, "file", real)


def _link_chain(path: Path) -> list[Path]:
    """`path` and each target its symlinks lead to (`r.json -> /proc/self/fd/1 -> ...`)."""
    hops = [Path(os.path.abspath(path))]
    for _ in range(40):  # the kernel's own limit on nested links
        try:
            target = os.readlink(hops[-1])
        except OSError:
            break
        hops.append(Path(os.path.abspath(hops[-1].parent / target)))
    return hops


def _check_parent(option: str, given: Path, parent: Path) -> None:
    """The nearest existing folder above the file must be a writable folder."""
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {given}: {existing} is a file, not a folder")
    probe = existing / f".mcomp-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{option} {given}: cannot write to {existing}: {exc.strerror}") from None


def stage_file(destination: Destination, data: bytes) -> None:
    """Write a "file" destination's bytes beside it (renamed in by `place_file`)."""
    target = destination.target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target.parent)
        destination.staged = stage_bytes(target, data)
    except OSError as exc:
        raise OutputError(f"{destination.option} {destination.given}: {_why(exc)}") from None


def place_file(destination: Destination) -> None:
    if destination.staged is not None:
        os.replace(destination.staged, destination.target)
        destination.staged = None


def discard_staged(destination: Destination) -> None:
    if destination.staged is not None:
        with contextlib.suppress(OSError):
            destination.staged.unlink()
        destination.staged = None


def write_stream(destination: Destination, data: bytes) -> None:
    """A device or FIFO: written where it is, as `cat > /dev/stdout` would."""
    try:
        # the path as given: /dev/stdout resolves to "pipe:[1234]", which only the kernel opens
        with open(destination.given, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise OutputError(f"{destination.option} {destination.given}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    return f"cannot write: {exc.strerror or exc}"
