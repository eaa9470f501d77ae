"""The CPU's vector instruction sets, which decide whether int8 kernels are fast (and
`reduce_range: auto`): detected portably, and the report says how.

Sources, first that answers wins:

1. Linux `/proc/cpuinfo` flags: the kernel's view, the only one that also names AVX-VNNI
   and AMX.
2. macOS `sysctl` (`machdep.cpu.*features` on Intel, `hw.optional.arm.FEAT_DotProd` on Apple
   silicon).
3. numpy's runtime dispatch table (`__cpu_features__`, filled from CPUID on x86 and from the
   OS on ARM, on every platform numpy supports; numpy is a dependency already). It knows
   AVX2, AVX-512, AVX-512 VNNI and the ARM dot product, not AVX-VNNI or AMX.

    >>> detect_cpu_features().source in SOURCES
    True
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
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
# numpy's names for the same sets (https://numpy.org/doc/stable/reference/simd/)
NUMPY_FLAGS = {
    "AVX2": "AVX2",
    "AVX512F": "AVX-512",
    "AVX512VNNI": "AVX-512 VNNI",
    "ASIMDDP": "ARM dot-product",
}
SYSCTL_FLAGS = {"AVX2": "AVX2", "AVX512F": "AVX-512", "AVX512VNNI": "AVX-512 VNNI"}
SOURCES = ("/proc/cpuinfo", "sysctl", "numpy CPU dispatch (CPUID)", "none")


@dataclass(frozen=True)
class CpuFeatures:
    """The int8-relevant instruction sets found, and where they were read."""

    names: tuple[str, ...]
    source: str


@cache
def detect_cpu_features() -> CpuFeatures:
    """The first source of the module docstring that answers."""
    for source, reader in (
        ("/proc/cpuinfo", _proc_cpuinfo),
        ("sysctl", _sysctl),
        ("numpy CPU dispatch (CPUID)", _numpy),
    ):
        names = reader()
        if names is not None:
            return CpuFeatures(tuple(names), source)
    return CpuFeatures((), "none")


def cpu_features() -> list[str]:
    """Names of the int8-relevant instruction sets this CPU has, e.g. ['AVX2', 'AVX-512']."""
    return list(detect_cpu_features().names)


def parse_cpuinfo(text: str) -> list[str] | None:
    """The sets named in /proc/cpuinfo text (x86 `flags`, ARM `Features`); None without."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return [name for flag, name in FLAGS.items() if flag in flags]
    return None


def _proc_cpuinfo() -> list[str] | None:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def _sysctl() -> list[str] | None:
    if platform.system() != "Darwin":
        return None
    keys = ["machdep.cpu.features", "machdep.cpu.leaf7_features", "hw.optional.arm.FEAT_DotProd"]
    found: set[str] = set()
    for key in keys:
        try:
            out = subprocess.run(
                ["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        if key.endswith("FEAT_DotProd"):
            found |= {"ARM dot-product"} if out == "1" else set()
        else:
            found |= {name for flag, name in SYSCTL_FLAGS.items() if flag in out.split()}
    order = list(FLAGS.values())
    return sorted(found, key=order.index)


def parse_numpy_features(features: dict[str, bool]) -> list[str]:
    """The sets numpy's dispatch table reports as present."""
    return [name for flag, name in NUMPY_FLAGS.items() if features.get(flag)]


def _numpy() -> list[str] | None:
    try:  # numpy 2 moved the table from numpy.core to numpy._core
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    return parse_numpy_features(features)
