"""Check that a batch fits in memory before it is allocated (a batch of 10^12 samples once
ran a machine out of memory instead of failing in a second)."""

from __future__ import annotations

import os

import numpy as np

from mcomp.errors import DataError

SHARE = 0.5  # of the memory available now: the model, its sessions and copies need the rest


def available_memory() -> int | None:
    """Bytes the system can still give this process (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_fits(batch: int, inputs: dict[str, np.ndarray], key: str) -> None:
    """A batch of `batch` samples shaped like `inputs` (arrays with a sample axis) must take
    at most half of the available memory."""
    per_sample = sum(a[:1].nbytes for a in inputs.values())
    need = batch * per_sample
    free = available_memory()
    if free is not None and need > SHARE * free:
        raise DataError(
            f"{key}: a batch of {batch} samples needs {_size(need)} for the inputs alone, "
            f"more than half of the {_size(free)} of memory available; use a smaller batch"
        )


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"
