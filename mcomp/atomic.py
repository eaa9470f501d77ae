"""Write files atomically (temp file in the same folder, then rename): a failed run never
leaves a half-written file and never clobbers a good one.

Files get the mode any other program would give them: 0666 minus the umask (mkstemp alone
makes them 0600, so a serving container or a CI artifact step running as another user could
not read the model), or the mode of the file they replace. Temp names carry the writer's pid
(`.model.onnx.mcomp-1234-k3j9.tmp`), so that the litter of a killed run is told apart from
a live run's file and removed (`remove_stale_temp_files`).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import threading
from pathlib import Path

_STALE = re.compile(r"^\..+\.mcomp-(\d+)-[^.]+\.tmp$")
# earlier versions named temp files `.model.onnx.k3j9abcd.tmp` (mkstemp's 8 characters)
_OLD_STALE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_umask_lock = threading.Lock()
_umask: int | None = None


def current_umask() -> int:
    """The process's umask (read once; setting it back at once is the only portable way)."""
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
        return _umask


def file_mode(replacing: Path | None = None) -> int:
    """The mode for a new file: that of the file it replaces, else 0666 minus the umask."""
    if replacing is not None:
        with contextlib.suppress(OSError):
            return stat.S_IMODE(os.stat(replacing).st_mode)
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def temp_path_for(path: Path) -> tuple[int, Path]:
    """An open, empty temp file beside `path` (same folder: the rename stays atomic)."""
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.mcomp-{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    return fd, Path(tmp)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and one rename (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_bytes(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stage_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path` (flushed to disk, final mode); its path.

    The caller renames it into place (`os.replace`) or removes it."""
    mode = file_mode(path)
    fd, tmp = temp_path_for(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: Path, *, old_style: bool = False) -> list[str]:
    """Remove temp files that killed runs left in `folder`; the names removed.

    A temp file of a live process stays. `old_style`: also the pid-less names of earlier
    mcomp versions (only where a lock says no other run writes, e.g. the output folder)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _STALE.match(entry.name)
            stale = match is not None and not pid_alive(int(match.group(1)))
            if old_style and match is None and _OLD_STALE.match(entry.name):
                stale = True
            if stale and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True
