"""Reusable click options, declared once and shared by the commands."""

from __future__ import annotations

import click


def complete_recipe(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion of RECIPE: the bundled recipes' names, and files."""
    from click.shell_completion import CompletionItem

    from mcomp.recipe.bundled import bundled_names

    names = [CompletionItem(n) for n in bundled_names() if n.startswith(incomplete)]
    return names + [CompletionItem(incomplete, type="file")]


recipe_argument = click.argument("recipe", metavar="RECIPE", shell_complete=complete_recipe)

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set stages.0.prune.sparsity=0.7 (repeatable).",
)
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON on stdout (logs stay on stderr).",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Only errors and warnings.")
debug_option = click.option(
    "--debug",
    is_flag=True,
    envvar="MCOMP_DEBUG",
    help="Show Python tracebacks on errors (also MCOMP_DEBUG=1).",
)
