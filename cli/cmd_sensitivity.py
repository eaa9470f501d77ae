"""`mcomp sensitivity`: prune each layer alone at several ratios and measure the metric."""

from __future__ import annotations

from pathlib import Path

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.library_filter import libraries_filtered, verbose_option
from mcomp.cli.options import debug_option, json_option, quiet_option, recipe_argument, set_option


def _ratios(value: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("a comma-separated list like 0.1,0.5,0.9") from None
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise click.BadParameter("every ratio must be between 0 and 1 (exclusive)")
    return tuple(sorted(ratios))


@click.command()
@recipe_argument
@click.option(
    "--ratios",
    default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    show_default=True,
    help="Pruning ratios tried on each layer.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("mcomp-out"),
    show_default=True,
    help="Where sensitivity.json/.csv/.png are written.",
)
@json_option
@quiet_option
@verbose_option
@debug_option
@set_option
@error_boundary
def sensitivity(
    recipe: str,
    ratios: str,
    out_dir: Path,
    as_json: bool,
    quiet: bool,
    verbose: bool,
    debug: bool,
    overrides: tuple[str, ...],
) -> None:
    """Prune each prunable layer alone at several ratios and measure the eval metric.

    Uses the model, data and the first `prune` stage's method and include/exclude patterns of
    RECIPE. Writes sensitivity.json (for `prune: {sensitivity: ...}`), sensitivity.csv and a
    plot sensitivity.png (needs matplotlib: pip install 'mcomp[plot]').

    \b
    Examples:
      mcomp sensitivity recipe.yaml --out analysis/
      mcomp sensitivity quickstart --ratios 0.5,0.7,0.9 --json
    """
    import json

    from mcomp.cli.progress_ui import make_progress
    from mcomp.cli.render import stderr_console
    from mcomp.tools.sensitivity import run_sensitivity

    progress = make_progress(quiet)
    with libraries_filtered(verbose, quiet):
        result = run_sensitivity(recipe, overrides, _ratios(ratios), out_dir, progress)
    if not quiet:
        _render(result["analysis"], stderr_console())
    for warning in result["warnings"]:
        progress.warn(warning)
    if as_json:
        click.echo(json.dumps(result["analysis"], indent=2))
    else:
        click.echo(f"wrote {', '.join(result['files'])}")


def _render(analysis: dict, console) -> None:
    from rich.table import Table

    table = Table(
        title=f"{analysis['metric_name']} drop when one layer is pruned alone "
        f"({analysis['method']}; baseline {analysis['baseline']:.4f})",
        title_justify="left",
    )
    table.add_column("layer")
    table.add_column("params", justify="right")
    for ratio in analysis["ratios"]:
        table.add_column(f"{ratio:g}", justify="right")
    for name, entry in analysis["layers"].items():
        table.add_row(name, str(entry["params"]), *[f"{p['drop']:+.3f}" for p in entry["points"]])
    console.print(table)
