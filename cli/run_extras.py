"""What `mcomp run` adds once its outputs are written: the Markdown summary appended to
GitHub's job summary ($GITHUB_STEP_SUMMARY), or printed on stdout for `--summary-md -`.

The summary file, provenance.json and `--report` are part of the run's outputs, written with
them as one unit (`mcomp.run.writer`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def append_step_summary(report: dict[str, Any], summary_md: Path | None) -> None:
    """Append the summary to $GITHUB_STEP_SUMMARY when set; print it for `--summary-md -`."""
    from mcomp.errors import OutputError
    from mcomp.report.markdown import summary_markdown

    text = summary_markdown(report)
    if summary_md is not None and str(summary_md) == "-":
        click.echo(text)
    step_summary = os.environ.get(STEP_SUMMARY_ENV, "").strip()
    if not step_summary:
        return
    try:
        # GitHub collects this file per step; appending is its documented protocol.
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        raise OutputError(
            f"{STEP_SUMMARY_ENV}: cannot append the run summary to {step_summary}: "
            f"{exc.strerror or exc}; the outputs were written"
        ) from None
