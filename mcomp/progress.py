"""The tiny progress protocol stages report through.

Stages and the core never import rich: they call `start/advance/finish/log` on whatever the
caller hands them. The CLI implements it with rich on a terminal and plain lines in CI logs;
tests use `NullProgress`.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of long work and log lines (both go to stderr in the CLI)."""

    def start(self, description: str, total: int | None = None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...

    def finish(self) -> None: ...

    def log(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...


class NullProgress:
    """Swallows progress; keeps warnings so that callers (and tests) can read them."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.messages: list[str] = []

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def log(self, message: str) -> None:
        self.messages.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
