"""Resident memory of this process (Linux /proc/self/status, else `resource`), to measure how
much an onnxruntime session adds."""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def rss_bytes() -> int | None:
    """Current resident set size (VmRSS)."""
    return _status_kib("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set size (VmHWM; since the last `reset_peak_rss`, else process start)."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
        import sys

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB else
    except (ImportError, OSError):
        return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
