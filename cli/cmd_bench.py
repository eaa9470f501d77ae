"""`mcomp bench MODEL.onnx`: onnxruntime CPU latency, throughput and memory."""

from __future__ import annotations

from pathlib import Path

import click

from mcomp.cli.errors import error_boundary
from mcomp.cli.library_filter import libraries_filtered, verbose_option
from mcomp.cli.model_options import (
    echo_json,
    inputs_option,
    load_data,
    model_argument,
    threads_from,
    threads_option,
)
from mcomp.cli.options import debug_option, json_option

EPILOG = "\b\nExit codes: 0 ok, 2 bad input (missing, unreadable or non-ONNX model)."


@click.command(epilog=EPILOG)
@model_argument
@click.option(
    "--batch",
    "batches",
    multiple=True,
    type=click.IntRange(1, 65_536),
    help="Batch size to time (repeatable; default: 1 and 32).",
)
@threads_option
@click.option(
    "--data",
    metavar="FILE.npz|digits",
    help="Time on these inputs (arrays named like the model's inputs, or --inputs), "
    "repeated up to each batch size; default: random data (integer inputs: zeros).",
)
@inputs_option
@click.option(
    "--warmup",
    type=click.IntRange(0, 10_000),
    default=5,
    show_default=True,
    help="Untimed runs before each batch size.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 100_000),
    default=30,
    show_default=True,
    help="Timed runs per batch size.",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also the kernel time per op type at the largest batch (onnxruntime's "
    "profiler) and the share spent in int8 kernels.",
)
@json_option
@verbose_option
@debug_option
@error_boundary
def bench(
    model: Path,
    batches: tuple[int, ...],
    threads: int | None,
    data: str | None,
    input_arrays: tuple[str, ...],
    warmup: int,
    runs: int,
    profile: bool,
    as_json: bool,
    verbose: bool,
    debug: bool,
) -> None:
    """Time MODEL (ONNX) with onnxruntime on the CPU: latency p50/p90/mean per batch size,
    samples/s, the session's peak memory and the CPU's instruction sets. Inputs come from
    --data (its samples repeated up to the batch size), else random data of the model's
    input signature (integer inputs: zeros, unrealistic for token models: pass --data).

    \b
    Examples:
      mcomp bench mcomp-out/model.onnx
      mcomp bench model.onnx --batch 1 --batch 64 --threads 4 --runs 100
      mcomp bench model.onnx --json | jq '.batches[0].p50_ms'
      mcomp bench encoder.onnx --data tokens.npz --inputs input_ids --inputs attention_mask
      mcomp bench mcomp-out/model.onnx --batch 64 --profile   # where int8 time goes
    """
    from mcomp.cli.companion_render import render_bench
    from mcomp.tools.bench import bench_model

    with libraries_filtered(verbose):
        result = bench_model(
            model,
            batches=list(batches) or [1, 32],
            threads=threads_from(threads),
            warmup=warmup,
            runs=runs,
            profile=profile,
            data=load_data(data, input_arrays, None),
            data_name=data,
        )
    if as_json:
        echo_json(result)
    else:
        render_bench(result)
