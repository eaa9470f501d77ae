"""What `mcomp report` prints on stdout: a saved report (table, Markdown or JSON) or the
comparison of two."""

from __future__ import annotations

from typing import Any

import click


def show_report(report: dict[str, Any], *, as_json: bool, as_markdown: bool) -> None:
    """One saved report in the form asked for; the table is the one `mcomp run` shows."""
    if as_json:
        from mcomp.report.json_text import report_json

        click.echo(report_json(report), nl=False)
    elif as_markdown:
        from mcomp.report.markdown import summary_markdown

        click.echo(summary_markdown(report))
    else:
        from mcomp.cli.companion_render import stdout_console
        from mcomp.cli.render import render_report

        render_report(report, stdout_console())


def show_diff(
    loaded: list[tuple[str, dict[str, Any]]], *, fail_on: str | None, as_json: bool
) -> bool:
    """The comparison of OLD and NEW; returns False when a --fail-on condition is broken."""
    from mcomp.report.diff import diff_reports

    (old_label, old), (new_label, new) = loaded
    result = diff_reports(old, new, labels=(old_label, new_label), fail_on=fail_on)
    if as_json:
        from mcomp.report.json_text import report_json

        click.echo(report_json(result), nl=False)
    else:
        from mcomp.cli.companion_render import stdout_console
        from mcomp.cli.diff_render import render_diff

        render_diff(result, stdout_console())
    return result["ok"]
