"""`mcomp recipes`: the bundled example recipes, one line each."""

from __future__ import annotations

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.options import debug_option, json_option

WIDE = 140  # the stages column shows from this many columns on (always in --json)


@click.command(epilog="\b\nExit codes: 0 ok.")
@json_option
@debug_option
@error_boundary
def recipes(as_json: bool, debug: bool) -> None:
    """List the example recipes shipped with mcomp: `mcomp run NAME` runs one, and
    `mcomp run NAME --out DIR` keeps its results apart.

    \b
    Examples:
      mcomp recipes
      mcomp run prune_channels
      mcomp recipes --json | jq -r '.[].name'
    """
    from mcomp.cli.companion_render import stdout_console
    from mcomp.cli.model_options import echo_json
    from mcomp.recipe.bundled import bundled_recipes

    found = bundled_recipes()
    if as_json:
        echo_json(
            [
                {"name": r.name, "stages": list(r.stages), "description": r.description}
                for r in found
            ]
        )
        return
    console = stdout_console()
    for line in recipe_lines(found, console.width):
        console.print(line, highlight=False, markup=False)


def recipe_lines(found, width: int) -> list[str]:
    """`name  description` per recipe, the stages too on wide terminals, cut to `width`."""
    name_width = max(len(recipe.name) for recipe in found)
    lines = []
    for recipe in found:
        text = f"{recipe.name:<{name_width}}  "
        if width >= WIDE:
            text += f"{' → '.join(recipe.stages):<48}  "
        text += recipe.description
        lines.append(text if len(text) <= width else text[: width - 1] + "…")
    return lines
