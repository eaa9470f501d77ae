"""The CPU's vector instruction sets, which decide whether int8 kernels are fast."""

from __future__ import annotations

from functools import cache
from pathlib import Path

FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "asimddp": "ARM dot-product",
}


@cache
def cpu_features() -> list[str]:
    """Names of the int8-relevant instruction sets this CPU reports (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [name for flag, name in FLAGS.items() if flag in flags]
