"""`mcomp-manifest.json`: what one run wrote into its output folder, with digests.

    {"mcomp_version": "0.1.0",
     "files": {"model.onnx": {"sha256": "…", "bytes": 41230}, "report.json": {…}, …},
     "removed": ["model.pt2"],     # the earlier run's outputs this run did not write
     "kept": ["notes.txt"]}        # what is in the folder but not mcomp's

The next run reads it to know which files are its predecessor's (removed when not written
again) and which are the user's (left alone). A reader can check a set against it
(`check_set`): every file present with its digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mcomp import __version__

MANIFEST = "mcomp-manifest.json"


def build_manifest(files: dict[str, bytes], *, kept: list[str], removed: list[str]) -> dict:
    return {
        "mcomp_version": __version__,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
        "removed": removed,
        "kept": kept,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, or {} (none, or unreadable: nothing is known to be mcomp's)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return {}
    # a name that leaves the folder is no file of a run's (the manifest may be edited)
    manifest["files"] = {
        name: facts
        for name, facts in manifest["files"].items()
        if isinstance(name, str) and not Path(name).is_absolute() and ".." not in Path(name).parts
    }
    return manifest


def check_set(folder: Path) -> list[str]:
    """What is wrong with the folder's set: missing files, digests that differ; [] if whole."""
    manifest = read_manifest(folder)
    if not manifest:
        return [f"{folder / MANIFEST}: missing or unreadable"]
    problems = []
    for name, facts in manifest["files"].items():
        path = folder / name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if digest != facts.get("sha256"):
            problems.append(f"{path}: differs from the manifest")
    return problems
