"""The CLI side of `mcomp.library_output`: `--verbose` shows what libraries say, otherwise one
line counts what was held back (nothing at all under --quiet)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

verbose_option = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also show what libraries print or warn (torch, onnxruntime), held back otherwise.",
)


def _show(line: str) -> None:
    click.echo(f"mcomp: [library] {line}", err=True)


@contextlib.contextmanager
def libraries_filtered(verbose: bool, quiet: bool = False) -> Iterator[None]:
    """Run a command's core with library output routed through the one filter."""
    from mcomp.library_output import library_output

    with library_output(_show if verbose else None) as heard:
        yield
    if heard.count and not verbose and not quiet:
        click.echo(
            f"mcomp: {heard.count} line(s) from libraries held back (--verbose shows them)",
            err=True,
        )
