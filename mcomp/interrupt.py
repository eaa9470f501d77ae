"""Ctrl-C and SIGTERM as exceptions, so that every `finally` and `with` cleans up.

SIGTERM is what `timeout`, CI cancellation and `docker stop` send; by default it ends the
process on the spot, leaving temp files behind. `handle_termination` turns it into
`Terminated` (a BaseException, like KeyboardInterrupt, so `except Exception` in a library
cannot swallow it). `deferred_signals` holds both back during a commit that must not be cut
in half (switching the output set in), and raises the first one when the commit is done.

What the interruption left behind is attached to the exception (`say_outcome`), so the CLI's
message can tell the truth ("the outputs in mcomp-out/ are unchanged").

A Python signal handler runs only when the main thread is back in Python; a process blocked
in a long library call (a torchrun collective waiting for a dead rank, a large onnxruntime
session) would not react before `docker stop` or torchrun sends SIGKILL. So a watchdog thread
hears SIGTERM too (`signal.set_wakeup_fd`): if the main thread has not taken it within
GRACE_SECONDS, the watchdog runs the registered emergency cleanups (`emergency_cleanup`),
prints the same one line and ends the process with 143.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
GRACE_SECONDS = 2.0
_taken = threading.Event()  # the main thread has taken the latest SIGTERM
_emergency: list[Callable[[], str]] = []  # cleanups for the watchdog; each says the outcome


class Terminated(BaseException):
    """SIGTERM arrived (a CI cancellation, `timeout`, `docker stop`)."""


def _raise_terminated(signum, frame) -> None:
    _taken.set()
    raise Terminated()


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block (main thread only; elsewhere a no-op),
    with the watchdog of the module docstring."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    watchdog = threading.Thread(target=_watch, args=(read,), daemon=True, name="mcomp-sigterm")
    watchdog.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous)
        os.close(write)  # the watchdog reads end-of-file and stops


def _watch(read: int) -> None:
    try:
        while data := os.read(read, 64):
            if signal.SIGTERM not in data:
                continue
            if not _taken.wait(GRACE_SECONDS):
                _exit_now()
            _taken.clear()
    finally:
        os.close(read)


def _exit_now() -> None:
    """The main thread is stuck in a library call: clean up from here, say so, leave."""
    outcomes = []
    for cleanup in list(_emergency):
        with contextlib.suppress(Exception):
            outcomes.append(cleanup())
    text = f"terminated (SIGTERM); {outcomes[-1] if outcomes else 'nothing was written'}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # as the CLI's error lines under torchrun
        text = f"rank {os.environ.get('RANK', '?')}: {text}"
    with contextlib.suppress(OSError):
        os.write(2, f"mcomp: {text}\n".encode())
    os._exit(EXIT_TERMINATED)


@contextlib.contextmanager
def emergency_cleanup(cleanup: Callable[[], str]) -> Iterator[None]:
    """Register what the watchdog runs if SIGTERM finds the main thread stuck; `cleanup`
    returns what it leaves behind ("the outputs in X are unchanged")."""
    _emergency.append(cleanup)
    try:
        yield
    finally:
        _emergency.remove(cleanup)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then raise as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame) -> None:
        if signum == signal.SIGTERM:
            _taken.set()
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        if pending[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated()


def say_outcome(exc: BaseException, text: str) -> None:
    """Attach what an interruption left behind; the first (innermost) account wins."""
    if getattr(exc, "mcomp_outcome", None) is None:
        exc.mcomp_outcome = text  # type: ignore[attr-defined]


def outcome_of(exc: BaseException) -> str:
    """What `say_outcome` attached, else the account that holds when no output was begun."""
    return getattr(exc, "mcomp_outcome", None) or "nothing was written"
