"""Switch a run's outputs into its output folder as one unit.

Folder mode: the new set is written into `.NAME.mcomp-next-PID/` beside the folder, with
everything of the old folder that is not an output of the earlier run linked in (the user's
own files, the resume cache), then exchanged with the folder in one `renameat2` call
(RENAME_EXCHANGE; `renamex_np` on macOS; two renames where neither exists, the gap closed by
the next run). Files mode (a mount point, the current directory): the set is written into
`.mcomp/next/`, a journal naming it is the commit point, then each file is renamed into
place, the manifest last; a run killed in between is completed by the next one.

Either way the earlier run's outputs that this run did not write are removed (the manifest
says which), and Ctrl-C or SIGTERM wait while the set is switched in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import sys
from pathlib import Path

from mcomp.atomic import dir_mode, file_mode
from mcomp.interrupt import deferred_signals
from mcomp.run import fault_points
from mcomp.run.journal import JOURNAL, roll_forward, write_journal
from mcomp.run.lock import OutputLock, try_lock
from mcomp.run.manifest import MANIFEST, build_manifest, read_manifest
from mcomp.run.outputs import WORK_AREA, OutputFolder

# never carried into the next set: the lock (a fresh one comes), scratch, a journal
_NOT_CARRIED = {f"{WORK_AREA}/lock", f"{WORK_AREA}/work", f"{WORK_AREA}/next"}
_NOT_CARRIED.add(f"{WORK_AREA}/{JOURNAL}")


def commit_outputs(folder: OutputFolder, files: dict[str, bytes]) -> dict:
    """Write `files` (relative path → bytes) as the folder's new set; the manifest."""
    old = read_manifest(folder.path)
    removed = sorted(set(old.get("files", {})) - set(files) - {MANIFEST})
    kept = _foreign_names(folder.path, set(files), set(old.get("files", {})))
    manifest = build_manifest(files, kept=kept, removed=removed)
    if folder.mode == "folder":
        _commit_folder(folder, files, manifest, removed)
    else:
        _commit_files(folder, files, manifest, removed)
    for name in removed:
        folder.progress.log(f"removed {folder.path / name} (an earlier run's, not written now)")
    if kept:
        shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        folder.progress.log(f"kept what is not mcomp's in {folder.path}: {shown}")
    return manifest


def _foreign_names(out: Path, new: set[str], old: set[str]) -> list[str]:
    """Top-level entries that are neither this run's outputs nor the earlier run's."""
    ours = {n.split("/")[0] for n in new | old} | {WORK_AREA, MANIFEST}
    with contextlib.suppress(OSError):
        return sorted(e.name for e in os.scandir(out) if e.name not in ours)
    return []


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # the mode the file it replaces had, or umask's
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _stage(folder: OutputFolder, target: Path, files: dict[str, bytes], manifest: dict) -> None:
    """The new set's files under `target`, the manifest (the mark of a complete set) last."""
    for name, data in files.items():
        _write_new(target / name, data, mode=file_mode(folder.path / name))
        fault_points.reached(f"write:{name}")
    text = json.dumps(manifest, indent=2) + "\n"
    _write_new(target / MANIFEST, text.encode(), mode=file_mode(folder.path / MANIFEST))
    fault_points.reached(f"write:{MANIFEST}")


def _commit_folder(folder: OutputFolder, files: dict, manifest: dict, removed: list) -> None:
    staging = folder.sibling("next")
    os.mkdir(staging, stat.S_IMODE(os.stat(folder.real).st_mode))
    try:
        skip = set(files) | set(removed) | {MANIFEST} | _NOT_CARRIED
        _carry(folder.path, staging, skip)
        (staging / WORK_AREA).mkdir(exist_ok=True, mode=dir_mode())
        new_lock = _lock_new(staging / WORK_AREA / "lock", folder.lock)
        _stage(folder, staging, files, manifest)
        _fsync_dir(staging)
        with deferred_signals():
            fault_points.reached("switch")
            _switch(staging, folder)
            folder.committed = True
            folder.lock.release()  # the old folder's lock file; waiters move to the new one
            folder.lock.path, folder.lock.fd = new_lock.path, new_lock.fd
            fault_points.reached("switched")
    finally:  # the unfinished next set, or after the exchange the old one
        shutil.rmtree(staging, ignore_errors=True)


def _lock_new(path: Path, held: OutputLock) -> OutputLock:
    """Lock the next set's fresh lock file (nobody else can have it yet), same owner line."""
    lock = try_lock(path)
    if lock is None:
        raise OSError(errno.EAGAIN, "cannot lock the next set's lock file", str(path))
    os.pwrite(lock.fd, os.pread(held.fd, 4096, 0), 0)
    return OutputLock(held.path, lock.fd)


def _switch(staging: Path, folder: OutputFolder) -> None:
    """Exchange `staging` with the folder: afterwards `staging` holds the old set."""
    if _exchange(staging, folder.real):
        return
    old = folder.sibling("old")
    os.rename(folder.real, old)
    fault_points.reached("between-renames")
    os.rename(staging, folder.real)
    os.rename(old, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the system has no such call."""
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        # renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE): glibc 2.28+, Linux 3.15+
        result = libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), 0x2)  # RENAME_SWAP
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _carry(source: Path, target: Path, skip: set[str], prefix: str = "") -> None:
    """Link (or copy) into `target` everything under `source` whose relative path is not
    in `skip`: the user's own files and the cache stay, and cost no space."""
    for entry in os.scandir(source):
        rel = prefix + entry.name
        if rel in skip:
            continue
        destination = target / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), destination)
        elif entry.is_dir():
            destination.mkdir(exist_ok=True)
            shutil.copystat(entry.path, destination)
            _carry(Path(entry.path), destination, skip, rel + "/")
        else:
            try:
                os.link(entry.path, destination)
            except OSError:  # a file system without hard links
                shutil.copy2(entry.path, destination)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit_files(folder: OutputFolder, files: dict, manifest: dict, removed: list) -> None:
    staging = folder.work_area / "next"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=dir_mode())
    try:
        _stage(folder, staging, files, manifest)
        journal = {"files": [*files, MANIFEST], "remove": removed}
        with deferred_signals():
            write_journal(folder.work_area / JOURNAL, journal)
            folder.committed = True
            fault_points.reached("commit")
            roll_forward(folder)
    except BaseException:
        if not folder.committed:
            shutil.rmtree(staging, ignore_errors=True)
        raise
