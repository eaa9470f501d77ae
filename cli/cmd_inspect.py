"""`mcomp inspect MODEL`: the per-layer table of a model."""

from __future__ import annotations

from pathlib import Path

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.library_filter import libraries_filtered, verbose_option
from mcomp.cli.model_options import echo_json, model_argument, model_options, model_ref
from mcomp.cli.options import debug_option, json_option

EPILOG = "\b\nExit codes: 0 ok, 2 bad input (missing or unreadable model)."


@click.command(epilog=EPILOG)
@model_argument
@model_options
@json_option
@verbose_option
@debug_option
@error_boundary
def inspect(
    model: Path,
    factory: str | None,
    python_path: tuple[Path, ...],
    input_shapes: tuple[str, ...],
    allow_pickle: bool,
    as_json: bool,
    verbose: bool,
    debug: bool,
) -> None:
    """Show each layer of MODEL (torch or ONNX): type, weight shape, parameters, non-zeros,
    sparsity, MACs and dtype (int8 for quantized ONNX layers), with totals.

    \b
    Examples:
      mcomp inspect mcomp-out/model.onnx
      mcomp inspect model.pt --factory mypkg.nets:mlp --python-path src --input-shape 16
      mcomp inspect model.onnx --json | jq .totals
    """
    from mcomp.cli.companion_render import render_inspect
    from mcomp.model.open import open_model
    from mcomp.tools.inspect import inspect_model

    with libraries_filtered(verbose):
        state = open_model(model_ref(model, factory, python_path, input_shapes, allow_pickle))
        result = inspect_model(state)
    for note in result["notes"]:
        click.echo(f"mcomp: note: {note}", err=True)
    if as_json:
        echo_json(result)
    else:
        render_inspect(result)
