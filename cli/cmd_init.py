"""`mcomp init`: write a commented starter recipe."""

from __future__ import annotations

from pathlib import Path

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.model_options import echo_json
from mcomp.cli.options import debug_option, json_option

EPILOG = "\b\nExit codes: 0 written, 2 bad input (the file exists without --force, no model)."


@click.command(epilog=EPILOG)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    help="Model file the recipe names (default: the bundled digits CNN).",
)
@click.option("--factory", metavar="PKG.MOD:FN", help="For a state_dict: the module factory.")
@click.option("--data", metavar="FILE.npz|digits", help="Train data the recipe names (and eval).")
@click.option(
    "--eval-data",
    metavar="FILE.npz",
    help="Held-out eval data (default: --data, with a warning: scores on training data).",
)
@click.option(
    "--task",
    type=click.Choice(["classification", "regression"]),
    default="classification",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("recipe.yaml"),
    show_default=True,
    help="Where to write the recipe.",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@json_option
@debug_option
@error_boundary
def init(
    model: Path | None,
    factory: str | None,
    data: str | None,
    eval_data: str | None,
    task: str,
    out: Path,
    force: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Write a commented starter recipe (no prompts) that `mcomp validate` accepts.

    \b
    Examples:
      mcomp init && mcomp run recipe.yaml          # the bundled digits model
      mcomp init --model model.pt --factory mypkg.nets:mlp --data train.npz \\
        --eval-data eval.npz --out r.yaml
      mcomp init --model model.onnx --task regression --force
    """
    from mcomp.recipe.schema import Task
    from mcomp.recipe.starter import (
        SHARED_SPLIT_WARNING,
        shares_train_and_eval,
        write_starter_recipe,
    )

    written = write_starter_recipe(
        out,
        force=force,
        model=model,
        task=Task(task),
        factory=factory,
        data=data,
        eval_data=eval_data,
    )
    if model is not None and shares_train_and_eval(data, eval_data):
        click.echo(f"mcomp: warning: {SHARED_SPLIT_WARNING.format(data=data)}", err=True)
    if as_json:
        echo_json({"file": str(written), "model": str(model) if model else "builtin:digits_cnn"})
    else:
        click.echo(f"wrote {written}; check it with `mcomp validate {written}`")
