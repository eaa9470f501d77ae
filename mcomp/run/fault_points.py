"""A test hook: stop the process at a named point of writing the outputs.

`MCOMP_TEST_KILL_AT=switch` sends this process SIGKILL (or the signal named by
`MCOMP_TEST_KILL_SIGNAL`, e.g. `TERM` or `INT`) when the run reaches that point, so a test
can check what a power cut, `kill -9` or a CI cancellation at that very moment leaves behind.
The points are listed in docs/outputs.md ("Fault injection"). Unset, it does nothing.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "MCOMP_TEST_KILL_AT"
SIGNAL_ENV = "MCOMP_TEST_KILL_SIGNAL"


def reached(point: str) -> None:
    """Called at each named point; stops the process if the test hook names this one."""
    if os.environ.get(KILL_AT_ENV) != point:
        return
    name = os.environ.get(SIGNAL_ENV, "KILL").upper().removeprefix("SIG")
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
