"""`mcomp compare A B`: two models side by side."""

from __future__ import annotations

from pathlib import Path

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.library_filter import libraries_filtered, verbose_option
from mcomp.cli.model_options import (
    data_options,
    echo_json,
    load_data,
    model_options,
    model_ref,
    output_option,
    threads_from,
    threads_option,
)
from mcomp.cli.options import debug_option, json_option

EPILOG = (
    "\b\nExit codes: 0 ok, 2 bad input (missing model, data that does not fit, models "
    "with different input signatures)."
)


@click.command(epilog=EPILOG)
@click.argument("model_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("model_b", metavar="B", type=click.Path(path_type=Path))
@data_options
@model_options
@output_option
@threads_option
@click.option(
    "--batch",
    type=click.IntRange(1, 65_536),
    default=1,
    show_default=True,
    help="Batch size of the latency runs.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 1_000),
    default=3,
    show_default=True,
    help="A,B timing rounds; the medians are compared.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="Timed runs per model per round.",
)
@json_option
@verbose_option
@debug_option
@error_boundary
def compare(
    model_a: Path,
    model_b: Path,
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
    batch: int,
    rounds: int,
    runs: int,
    as_json: bool,
    verbose: bool,
    debug: bool,
) -> None:
    """Compare model B with model A: size, parameters, MACs, onnxruntime latency (timed side
    by side in one run), the metric (with --data) and output agreement. Ratios are B / A.

    --factory/--python-path/--input-shape apply to whichever model is a torch file;
    --output to both (a name, or an index of the flattened outputs).

    \b
    Examples:
      mcomp compare model.onnx mcomp-out/model.onnx --data digits
      mcomp compare model.pt model_int8.onnx --factory mypkg.nets:mlp --data eval.npz --json
    """
    from mcomp.cli.companion_render import render_compare
    from mcomp.tools.compare import CompareOptions, compare_models

    refs = [
        model_ref(m, factory, python_path, input_shapes, allow_pickle, output)
        for m in (model_a, model_b)
    ]
    options = CompareOptions(
        threads=threads_from(threads), batch=batch, rounds=rounds, runs=runs, metric=metric
    )
    with libraries_filtered(verbose):
        result = compare_models(*refs, load_data(data, input_arrays, labels), options)
    if as_json:
        echo_json(result)
    else:
        render_compare(result)
