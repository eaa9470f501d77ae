"""What `mcomp run` leaves beside the pipeline's outputs: the Markdown summary (also appended
to GitHub's job summary) and the command line that produced the model (provenance.json)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def write_run_extras(report: dict[str, Any], summary_md: Path | None) -> None:
    """Write provenance.json next to the model, the Markdown summary to `summary_md`, and
    append the summary to $GITHUB_STEP_SUMMARY when that is set."""
    from mcomp.atomic import write_text_atomic
    from mcomp.errors import OutputError
    from mcomp.report.markdown import summary_markdown

    model = Path(report["artifacts"]["model"])
    try:
        write_text_atomic(model.parent / "provenance.json", _provenance(report))
        text = summary_markdown(report)
        if summary_md is not None:
            write_text_atomic(summary_md, text)
        step_summary = os.environ.get(STEP_SUMMARY_ENV, "").strip()
        if step_summary:
            # GitHub collects this file per step; appending is its documented protocol.
            with open(step_summary, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
    except OSError as exc:
        raise OutputError(
            f"cannot write the run summary: {exc.filename or ''}: {exc.strerror or exc}"
        ) from None


def _provenance(report: dict[str, Any]) -> str:
    argv = ["mcomp", *sys.argv[1:]]
    return (
        json.dumps(
            {
                "command": shlex.join(argv),
                "argv": argv,
                "cwd": os.getcwd(),
                "mcomp_version": report["mcomp_version"],
                "recipe_file": report["recipe_file"],
                "artifacts": report["artifacts"],
            },
            indent=2,
        )
        + "\n"
    )
