"""The output folder of a run: checked and locked before any work, cleaned of what killed
runs left, and holding one consistent set of outputs at every moment (docs/outputs.md).

    mcomp-out/
      model.onnx  report.json  recipe.resolved.yaml  provenance.json  mcomp-manifest.json
      .mcomp/lock      the run writing the folder (pid), see mcomp.run.lock
      .mcomp/cache/    each stage's model and facts, for `mcomp run --resume`
      .mcomp/work/     scratch files of the running stage (removed after each stage)

The set is written into a fresh sibling folder and switched in with one rename
(`mcomp.run.commit`), so a reader sees the whole old set or the whole new one. Where the
folder cannot be renamed (a mount point, the current directory) files are replaced one by
one under a journal that the next run completes, and the manifest is written last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mcomp.atomic import dir_mode, remove_stale_temp_files
from mcomp.errors import OutputError
from mcomp.progress import Progress
from mcomp.run.journal import roll_forward
from mcomp.run.lock import OutputLock, acquire_lock
from mcomp.run.manifest import MANIFEST

WORK_AREA = ".mcomp"
# a folder with more files than this that are not mcomp's is not switched as a whole (each
# of them would be linked into the new folder): its outputs are replaced file by file
MAX_FOREIGN_FILES = 1000


@dataclass
class OutputFolder:
    """An open, locked output folder (see the module docstring)."""

    path: Path
    mode: str  # "folder": switched in with one rename; "files": replaced one by one
    lock: OutputLock
    progress: Progress
    created: bool = False  # this run created the folder
    had_work_area: bool = False
    committed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def work_area(self) -> Path:
        # absolute: stages change directory (onnxruntime's quantizer writes into the cwd)
        return self.path.absolute() / WORK_AREA

    @property
    def cache_dir(self) -> Path:
        return self.work_area / "cache"

    @property
    def scratch_dir(self) -> Path:
        """Scratch files of the running stage (`ctx.workdir`), emptied after each stage."""
        return self.work_area / "work"

    @property
    def real(self) -> Path:
        """The folder that is switched: a symlink's target (the link itself stays)."""
        return Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path

    def sibling(self, kind: str, pid: int | None = None) -> Path:
        """`.mcomp-out.mcomp-next-1234`: where the next set is written before the switch."""
        return self.real.parent / f".{self.real.name}.mcomp-{kind}-{pid or os.getpid()}"

    def outcome(self, cached: int = 0) -> str:
        """What an interruption at this moment leaves in the folder (for the message);
        `cached`: how many of this run's stages `--resume` would reuse."""
        if self.committed:
            return f"the outputs in {self.path} were written before it stopped"
        text = f"the outputs in {self.path} are unchanged"
        if cached:
            text += f"; {cached} finished stage(s) are cached: `mcomp run --resume` goes on"
        return text

    def close(self) -> None:
        """Release the lock after `tidy()`."""
        self.tidy()
        self.lock.release()

    def tidy(self) -> None:
        """Remove the scratch area, and what this run added to a folder it leaves unchanged
        (nothing, unless stages were cached for --resume)."""
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        cached = self.cache_dir.is_dir() and any(self.cache_dir.iterdir())
        if not self.committed and not cached:
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            elif not self.had_work_area:
                shutil.rmtree(self.work_area, ignore_errors=True)


def open_output_folder(
    path: Path, *, replace: str = "auto", wait: bool = False, progress: Progress
) -> OutputFolder:
    """Create and lock `path`, clean what killed runs left, check that it can be written and
    decide how the set will be switched in (`replace`: auto, folder or files)."""
    if not path.exists():
        _recover_switch(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        had_work_area = (path / WORK_AREA).is_dir()
        (path / WORK_AREA).mkdir(exist_ok=True, mode=dir_mode())
        lock = acquire_lock(path / WORK_AREA / "lock", folder=path, wait=wait, progress=progress)
    except OSError as exc:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise _unwritable(path, exc) from None
    folder = OutputFolder(path, "folder", lock, progress, created, had_work_area)
    try:
        roll_forward(folder)
        _remove_litter(folder)
        _probe_writable(path / WORK_AREA, path)
        folder.mode, why = _choose_mode(folder, replace)
        if folder.mode == "files" and why:
            progress.log(f"{path}: {why}: outputs are replaced one by one (docs/outputs.md)")
    except BaseException:
        folder.close()
        raise
    return folder


def _choose_mode(folder: OutputFolder, replace: str) -> tuple[str, str]:
    if replace == "files":
        return "files", ""
    path = folder.path.resolve()
    cwd = Path.cwd().resolve()
    reason = ""
    if path == cwd or path in cwd.parents:
        reason = "it is (or holds) the current directory"
    elif os.path.ismount(path) or os.stat(path).st_dev != os.stat(path.parent).st_dev:
        reason = "it is a mount point"
    elif _count_files(path, MAX_FOREIGN_FILES + 1) > MAX_FOREIGN_FILES:
        reason = f"it holds more than {MAX_FOREIGN_FILES} files"
    else:
        try:
            _probe_writable(path.parent, path, sibling=True)
        except OutputError:
            reason = "its parent folder cannot be written"
    if reason and replace == "folder":
        raise OutputError(
            f"output.replace: folder: {folder.path} cannot be switched as a whole ({reason}); "
            "use `output.replace: files` or another --out"
        )
    return ("files", reason) if reason else ("folder", "")


def _count_files(path: Path, limit: int) -> int:
    count = 0
    for _, _, files in os.walk(path):
        count += len(files)
        if count >= limit:
            break
    return count


def _probe_writable(folder: Path, out: Path, *, sibling: bool = False) -> None:
    """Create and remove a file (a folder with `sibling`): permissions, read-only mounts and
    ACLs all answer, also for root, for whom os.access says yes to everything."""
    probe = folder / f".mcomp-probe-{os.getpid()}"
    try:
        if sibling:
            probe.mkdir()
            probe.rmdir()
        else:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
    except OSError as exc:
        raise _unwritable(out, exc) from None


def _unwritable(path: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"output.dir: cannot write to {path}: {exc.strerror or exc}; choose another "
        "folder (--out) or make it writable"
    )


def _siblings(path: Path, kinds: tuple[str, ...] = ("next", "old")) -> list[Path]:
    """The `.NAME.mcomp-next-PID` / `-old-PID` folders of runs into `path`."""
    prefix = f".{path.name}.mcomp-"
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            kind, _, pid = entry.name.removeprefix(prefix).partition("-")
            if entry.name.startswith(prefix) and kind in kinds and pid.isdigit():
                found.append(Path(entry.path))
    return found


def _recover_switch(path: Path) -> None:
    """Where the folder switch takes two renames (no atomic exchange on this system), a run
    killed between them leaves no folder, and its complete next set beside it: put it in."""
    for candidate in _siblings(path, ("next",)):
        if (candidate / MANIFEST).is_file() and not path.exists():
            with contextlib.suppress(OSError):
                os.rename(candidate, path)


def _remove_litter(folder: OutputFolder) -> None:
    """Temp files, scratch areas and next/old sets of killed runs (we hold the lock)."""
    removed = remove_stale_temp_files(folder.path, old_style=True)
    for name in ("work", "next"):
        shutil.rmtree(folder.work_area / name, ignore_errors=True)
    # only the lock holder writes next/old siblings: while we hold it, every one is stale
    for entry in _siblings(folder.real):
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        folder.progress.log(f"removed what killed runs left in {folder.path}: {len(removed)}")
