"""Ctrl-C and SIGTERM as exceptions, so that every `finally` and `with` cleans up.

SIGTERM is what `timeout`, CI cancellation and `docker stop` send; by default it ends the
process on the spot, leaving temp files behind. `handle_termination` turns it into
`Terminated` (a BaseException, like KeyboardInterrupt, so `except Exception` in a library
cannot swallow it). `deferred_signals` holds both back during a commit that must not be cut
in half (switching the output set in), and raises the first one when the commit is done.

What the interruption left behind is attached to the exception (`say_outcome`), so the CLI's
message can tell the truth ("the outputs in mcomp-out/ are unchanged").
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived (a CI cancellation, `timeout`, `docker stop`)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then raise as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame) -> None:
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
