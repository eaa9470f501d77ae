"""`mcomp eval MODEL --data ...`: the task metric of one model."""

from __future__ import annotations

from pathlib import Path

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.library_filter import libraries_filtered, verbose_option
from mcomp.cli.model_options import (
    data_options,
    echo_json,
    load_data,
    model_argument,
    model_options,
    model_ref,
    output_option,
    threads_from,
    threads_option,
)
from mcomp.cli.options import debug_option, json_option

EPILOG = "\b\nExit codes: 0 ok, 2 bad input (model or data missing, data that does not fit)."


@click.command("eval", epilog=EPILOG)
@model_argument
@data_options
@model_options
@output_option
@threads_option
@json_option
@verbose_option
@debug_option
@error_boundary
def eval_command(
    model: Path,
    data: str | None,
    input_arrays: tuple[str, ...],
    labels: str | None,
    metric: str,
    factory: str | None,
    python_path: tuple[Path, ...],
    input_shapes: tuple[str, ...],
    allow_pickle: bool,
    output: str | None,
    threads: int | None,
    as_json: bool,
    verbose: bool,
    debug: bool,
) -> None:
    """Compute the task metric of MODEL on labelled data (onnxruntime for ONNX, else torch).

    \b
    Examples:
      mcomp eval mcomp-out/model.onnx --data digits
      mcomp eval model.onnx --data eval.npz --inputs pixels --labels target --metric mse
      mcomp eval model.pt --factory mypkg.nets:mlp --data eval.npz --json
      mcomp eval model.pt2 --data eval.npz --output logits
    """
    from mcomp.cli.companion_render import render_eval
    from mcomp.data.open import fit_split
    from mcomp.model.open import open_model, select_output
    from mcomp.tools.eval import evaluate_model

    if data is None:
        raise click.UsageError("--data is required (an .npz file or `digits`)")
    n_threads = threads_from(threads)
    with libraries_filtered(verbose):
        ref = model_ref(model, factory, python_path, input_shapes, allow_pickle, output)
        state = open_model(ref, n_threads)
        split = fit_split(state, load_data(data, input_arrays, labels), n_threads)
        select_output(state, ref, split.inputs)
        result = evaluate_model(state, split, metric=metric, threads=n_threads)
    if as_json:
        echo_json(result)
    else:
        render_eval(result)
