"""`mcomp report`: show a saved report again, or compare two runs (CI's release check)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mcomp.cli.errors import EXIT_LIMIT_BROKEN, error_boundary
from mcomp.cli.options import debug_option, json_option

EPILOG = """\b
Exit codes: 0 ok, 1 a --fail-on condition is broken, 2 bad input (unreadable report,
malformed condition).
Conditions (docs/report.md): FIGURE<CHANGE or FIGURE>CHANGE (also <=, >=), comma-separated;
CHANGE is new - old, with % relative to old. Figures: metric, size, compressed, params,
nonzero, sparsity, macs, compression, speedup_b1, speedup_batch, latency_b1, latency_batch,
cosine, top1_agreement."""

plot_option = click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also draw size, latency and the metric per stage into this PNG (mcomp[plot]).",
)


@click.command(epilog=EPILOG)
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--md", "as_markdown", is_flag=True, help="Print the report as Markdown.")
@click.option(
    "--fail-on",
    metavar="CONDITIONS",
    help="With two reports: exit 1 when a condition holds, e.g. 'metric<-0.005,size>+5%'.",
)
@plot_option
@json_option
@debug_option
@error_boundary
def report(
    reports: tuple[Path, ...],
    as_markdown: bool,
    fail_on: str | None,
    plot_file: Path | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Show the saved report REPORT.json again (table, --md or --json), or compare two runs:
    OLD.json NEW.json gives every figure of the final models old → new with the change.

    \b
    Examples:
      mcomp report mcomp-out/report.json
      mcomp report mcomp-out/report.json --md >> "$GITHUB_STEP_SUMMARY"
      mcomp report main/report.json pr/report.json --fail-on "metric<-0.005,size>+5%"
      mcomp report old.json new.json --json | jq .figures.size
      mcomp report mcomp-out/report.json --plot stages.png
    """
    from mcomp.cli.report_output import show_diff, show_report
    from mcomp.report.saved import load_report

    if len(reports) > 2:
        raise click.UsageError("give one report to show, or two (OLD NEW) to compare")
    if fail_on is not None and len(reports) != 2:
        raise click.UsageError("--fail-on compares two reports: mcomp report OLD NEW --fail-on ...")
    if as_markdown and (as_json or len(reports) == 2):
        raise click.UsageError("--md shows one report, without --json")
    loaded = [(str(path), load_report(path)) for path in reports]
    if len(loaded) == 1:
        show_report(loaded[0][1], as_json=as_json, as_markdown=as_markdown)
        ok = True
    else:
        ok = show_diff(loaded, fail_on=fail_on, as_json=as_json)
    if plot_file is not None:
        from mcomp.report.plot import plot_reports

        click.echo(f"wrote {plot_reports(loaded, plot_file)}", err=True)
    if not ok:
        sys.exit(EXIT_LIMIT_BROKEN)
