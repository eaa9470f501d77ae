"""The progress protocol, implemented with rich on a terminal and plain lines elsewhere."""

from __future__ import annotations

import sys

import click


class PlainProgress:
    """One line per log message on stderr (CI logs); no bars."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.warnings: list[str] = []

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def log(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"mcomp: {message}", err=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        click.echo(f"mcomp: warning: {message}", err=True)


class RichProgress(PlainProgress):
    """A transient rich progress bar on stderr for long work (training, calibration)."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__(quiet)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._console = Console(stderr=True)
        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._task = None

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self._bar.stop()

    def log(self, message: str) -> None:
        if not self.quiet:
            self._console.print(f"[dim]mcomp:[/dim] {message}", highlight=False)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._console.print(f"[yellow]mcomp: warning:[/yellow] {message}", highlight=False)


def make_progress(quiet: bool) -> PlainProgress:
    """Bars only when stderr is a terminal; plain lines in CI logs and pipes."""
    return RichProgress(quiet) if sys.stderr.isatty() and not quiet else PlainProgress(quiet)
