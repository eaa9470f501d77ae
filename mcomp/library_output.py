"""One filter for what libraries say while mcomp works: Python warnings (torch's
`FutureWarning`s), `logging` records of other packages (onnxruntime's quantizer) and text
libraries print on stdout (onnxruntime's calibrators), which would otherwise corrupt
`--json` and clutter every run. Inside `library_output`, each such line goes to `show` (the
CLI's `--verbose`) or is only counted; mcomp's own messages go through `Progress` and are
not touched.

    with library_output(show=None) as heard:
        run_pipeline(...)
    heard.count  # lines that were held back
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heard:
    """What the libraries said inside the filter."""

    count: int = 0
    lines: list[str] = field(default_factory=list)
    show: Callable[[str], None] | None = None

    def add(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.count += 1
        if self.show is not None:
            self.show(line)


class _Lines(io.TextIOBase):
    """A text stream that hands every complete line to `heard`."""

    def __init__(self, heard: Heard) -> None:
        self._heard, self._pending = heard, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            self._heard.add(line)
        return len(text)

    def flush_pending(self) -> None:
        if self._pending:
            self._heard.add(self._pending)
            self._pending = ""


class _Records(logging.Handler):
    def __init__(self, heard: Heard) -> None:
        super().__init__(logging.WARNING)
        self._heard = heard

    def emit(self, record: logging.LogRecord) -> None:
        self._heard.add(f"{record.name}: {record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def library_output(show: Callable[[str], None] | None = None) -> Iterator[Heard]:
    """Route library warnings, log records and stdout prints to `show` (None: hold them
    back) for the duration; yields the running count."""
    heard = Heard(show=show)
    stream = _Lines(heard)
    root = logging.getLogger()
    # A root handler of our own also stops `logging.warning()` in a library from calling
    # basicConfig(), which would print every later record on stderr for the whole process.
    handler = _Records(heard)
    root.addHandler(handler)

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        heard.add(f"{category.__name__}: {message} ({Path(filename).name}:{lineno})")

    try:
        # the filters stay as they are: what Python would have shown is routed, no more
        with warnings.catch_warnings(), contextlib.redirect_stdout(stream):
            warnings.showwarning = showwarning
            yield heard
    finally:
        stream.flush_pending()
        root.removeHandler(handler)
