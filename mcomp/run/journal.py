"""The journal of a file-by-file commit (`output.replace: files`): written once the new set
is staged in `.mcomp/next/`, it is the commit point; `roll_forward` renames the staged files
into place (the manifest last) and removes the earlier run's, and the next run calls it first,
so a commit cut short by a kill is completed, never left half done."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mcomp.atomic import write_text_atomic
from mcomp.run import fault_points

if TYPE_CHECKING:
    from mcomp.run.outputs import OutputFolder

JOURNAL = "journal.json"


def _inside(out: Path, name: str) -> bool:
    """Whether `name` stays inside the folder (through symlinked subfolders too): a file
    list from disk never makes mcomp replace or delete a file elsewhere."""
    parent = (out / name).parent.resolve()
    return parent == out.resolve() or out.resolve() in parent.parents


def write_journal(path: Path, journal: dict) -> None:
    write_text_atomic(path, json.dumps(journal) + "\n")


def roll_forward(folder: OutputFolder) -> None:
    """Finish a files-mode commit: its journal names the staged files (manifest last)."""
    path = folder.work_area / JOURNAL
    try:
        journal = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    staging = folder.work_area / "next"
    for name in journal.get("files", []):
        fault_points.reached(f"rename:{name}")
        source = staging / name
        if source.exists() and _inside(folder.path, name):
            (folder.path / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, folder.path / name)
    for name in journal.get("remove", []):
        if _inside(folder.path, name):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(folder.path / name)
    if not folder.committed:  # a killed run's commit, completed now
        folder.progress.log(f"{folder.path}: completed the output set of an interrupted run")
    path.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
