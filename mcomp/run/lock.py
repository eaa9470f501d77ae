"""One run at a time per output folder: a lock file with the owner's pid.

The lock is an advisory `flock` on `.mcomp/lock` (the kernel drops it when its process dies,
however it dies), so a lock left by a killed run is taken over without a question; the pid
and start time written into the file only name the owner in the message a second run gets.
Lock files are never unlinked by a holder; after acquiring, the holder checks that the path
still names the file it locked (the output folder is switched as a whole at the end of a run,
and a fresh lock file comes with the new folder), and retries if not.

Where `fcntl` does not exist (Windows), the pid alone decides: a lock whose pid is not alive
is stale and taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from mcomp.atomic import pid_alive
from mcomp.errors import OutputError
from mcomp.progress import Progress

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

POLL_SECONDS = 0.5


class OutputLock:
    """A held lock; `release()` (or the process's death) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        if fcntl is None:  # pragma: no cover - Windows: the file is the lock
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def acquire_lock(path: Path, *, folder: Path, wait: bool, progress: Progress) -> OutputLock:
    """Lock `path` for this process; another live holder is an OutputError, or is waited
    for with `wait` (Ctrl-C and SIGTERM still end the wait)."""
    said = False
    while True:
        lock = try_lock(path)
        if lock is not None:
            _write_owner(lock.fd)
            return lock
        owner = read_owner(path)
        if not wait:
            raise OutputError(
                f"output.dir: {folder} is in use by another mcomp run ({owner}); wait for it "
                "to finish (--wait), or choose another folder (--out)"
            )
        if not said:
            progress.log(f"waiting for the other mcomp run in {folder} ({owner}) to finish")
            said = True
        time.sleep(POLL_SECONDS)


def try_lock(path: Path) -> OutputLock | None:
    """The lock on `path` if nobody holds it, else None (never waits)."""
    if fcntl is None:  # pragma: no cover - Windows
        return _try_pid_lock(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # the folder was switched under us: lock the file that is there now
        os.close(fd)
        return try_lock(path)
    return OutputLock(path, fd)


def _try_pid_lock(path: Path) -> OutputLock | None:  # pragma: no cover - Windows
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        pid = _owner_pid(path)
        if pid is not None and pid_alive(pid):
            return None
        with contextlib.suppress(OSError):
            os.unlink(path)
        return _try_pid_lock(path)
    return OutputLock(path, fd)


def _write_owner(fd: int) -> None:
    text = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode() + b"\n", 0)


def read_owner(path: Path) -> str:
    """'pid 1234 on host, since 12:00:01' from a lock file (or what is known of it)."""
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def _owner_pid(path: Path) -> int | None:  # pragma: no cover - Windows
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
