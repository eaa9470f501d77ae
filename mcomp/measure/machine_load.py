"""How busy the machine was while latency was timed: load average before and after, and the
CPU time other processes took.

The load average counts mcomp itself, so it cannot tell whether anyone else competed for the
CPUs. The machine's busy CPU time (Linux `/proc/stat`) minus this process's own (its threads
included) can: what is left is everyone else's.

    probe = LoadProbe.start()
    ...  # timing
    facts = probe.stop()  # {"others_share": 0.02, "load_before": [0.4, 0.8, 0.9], ...}
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Other processes used more than this share of all CPUs: the figures are noisier than usual.
BUSY_SHARE_WARNING = 0.10


@dataclass(frozen=True)
class _Snapshot:
    wall_s: float
    own_cpu_s: float
    machine_busy_s: float | None
    steal_s: float | None
    load: list[float] | None


@dataclass(frozen=True)
class LoadProbe:
    """A snapshot taken before the timing; `stop()` compares it with one taken after."""

    before: _Snapshot

    @classmethod
    def start(cls) -> LoadProbe:
        return cls(_snapshot())

    def stop(self) -> dict[str, Any]:
        """Load average before/after, own and others' CPU seconds, and their share of the
        machine's CPUs over the wall time (None where the platform does not tell)."""
        after = _snapshot()
        wall = max(after.wall_s - self.before.wall_s, 1e-9)
        capacity = wall * (os.cpu_count() or 1)
        own = after.own_cpu_s - self.before.own_cpu_s
        facts: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "cpus": os.cpu_count(),
            "load_before": self.before.load,
            "load_after": after.load,
            "own_cpu_s": round(own, 3),
            "machine_cpu_s": None,
            "others_cpu_s": None,
            "others_share": None,
            "steal_share": None,
        }
        if self.before.machine_busy_s is not None and after.machine_busy_s is not None:
            machine = after.machine_busy_s - self.before.machine_busy_s
            others = max(0.0, machine - own)
            facts.update(
                machine_cpu_s=round(machine, 3),
                others_cpu_s=round(others, 3),
                others_share=round(others / capacity, 4),
                steal_share=round((after.steal_s - self.before.steal_s) / capacity, 4),
            )
        return facts


def busy_warning(facts: dict[str, Any]) -> str | None:
    """One sentence when other processes took a noticeable share of the CPUs, else None."""
    share = facts.get("others_share")
    if share is None or share <= BUSY_SHARE_WARNING:
        return None
    return (
        f"other processes used {share:.0%} of the {facts['cpus']} CPUs "
        f"({facts['others_cpu_s']:.1f} CPU-s in {facts['wall_s']:.1f} s) while latency was "
        "timed: the figures are noisier than usual (see their spread); time on a quiet "
        "machine for figures to rely on"
    )


def _snapshot() -> _Snapshot:
    busy, steal = _proc_stat()
    times = os.times()
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        load = None
    return _Snapshot(
        wall_s=time.monotonic(),
        own_cpu_s=times.user + times.system,
        machine_busy_s=busy,
        steal_s=steal,
        load=load,
    )


def _proc_stat() -> tuple[float | None, float | None]:
    """Busy and steal CPU seconds of the whole machine since boot (Linux only)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        fields = [int(value) for value in first[1:]]
    except (OSError, ValueError):
        return None, None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick
