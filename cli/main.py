"""`mcomp`: the command group and its commands. Each command parses options, calls one core
function and renders the result; torch is imported only when a command needs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mcomp import __version__
from mcomp.cli.cmd_report import plot_option
from mcomp.cli.errors import EXIT_LIMIT_BROKEN, error_boundary
from mcomp.cli.json_error import JsonErrorGroup
from mcomp.cli.library_filter import libraries_filtered, verbose_option
from mcomp.cli.options import debug_option, json_option, quiet_option, recipe_argument, set_option

EPILOG = """\b
Exit codes: 0 ok, 1 a recipe limit (constraints) was broken, 2 bad input or a failed run,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
Docs: docs/index.md (recipe reference, report schema, CI use, the output folder)."""


@click.group(
    cls=JsonErrorGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG
)
@click.version_option(__version__, "--version", "-V", prog_name="mcomp")
def cli() -> None:
    """Compress a PyTorch or ONNX model from a YAML recipe: prune, finetune, quantize to int8,
    export ONNX, and report the before/after figures.

    \b
    Examples:
      mcomp run quickstart                      # the bundled example, no files needed
      mcomp run recipe.yaml --report report.json
      mcomp validate recipe.yaml
    """


@cli.command(epilog=EPILOG)
@recipe_argument
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Output directory (default: output.dir of the recipe, else ./mcomp-out).",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Also write the JSON report to this file ('-': stdout).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Reuse the stages an earlier run into the same folder cached with the same inputs "
    "and options; run the rest (docs/outputs.md).",
)
@click.option("--wait", is_flag=True, help="Wait while another run writes the same output folder.")
@json_option
@quiet_option
@verbose_option
@debug_option
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), help="Override the recipe's seed.")
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    help="Threads for torch and onnxruntime (default: runtime.threads, MCOMP_THREADS).",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Allow loading a whole pickled module (runs code from the file).",
)
@click.option(
    "--summary-md",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Also write a Markdown summary (appended to $GITHUB_STEP_SUMMARY when set).",
)
@plot_option
@set_option
@error_boundary
def run(
    recipe: str,
    out_dir: Path | None,
    report_file: Path | None,
    resume: bool,
    wait: bool,
    as_json: bool,
    quiet: bool,
    verbose: bool,
    debug: bool,
    seed: int | None,
    threads: int | None,
    allow_pickle: bool,
    summary_md: Path | None,
    plot_file: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Run the recipe's stages and write the compressed ONNX model and the report.

    RECIPE is a YAML file or the name of a bundled recipe (quickstart; `mcomp recipes`
    lists them).

    \b
    Examples:
      mcomp run quickstart
      mcomp run recipe.yaml --out build/ --report report.json
      mcomp run recipe.yaml --set stages.0.prune.sparsity=0.8 --json > report.json
      mcomp run recipe.yaml --summary-md summary.md --plot stages.png
      mcomp run recipe.yaml --resume            # reuse the stages that did not change
    """
    from mcomp.cli.progress_ui import make_progress
    from mcomp.progress import NullProgress
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    if str(summary_md) == "-" and (as_json or str(report_file) == "-"):
        raise click.UsageError("stdout takes one document: --summary-md - or the JSON report")
    loaded = load_recipe(recipe, overrides)
    options = RunOptions(
        out_dir=out_dir,
        allow_pickle=allow_pickle,
        seed=seed,
        threads=threads,
        resume=resume,
        wait=wait,
        report_file=report_file,
        summary_md=summary_md,
        command=["mcomp", *sys.argv[1:]],
    )
    # under torchrun only rank 0 talks and writes; the others stay quiet
    follower = int(os.environ.get("RANK", "0")) > 0
    with libraries_filtered(verbose, quiet or follower):
        result = run_pipeline(loaded, options, NullProgress() if follower else make_progress(quiet))
    if result.report is not None:
        _emit(result.report, as_json or str(report_file) == "-", quiet, summary_md)
        if plot_file is not None:
            from mcomp.report.plot import plot_reports

            plot_reports([("run", result.report)], plot_file)
    if not result.ok:
        sys.exit(EXIT_LIMIT_BROKEN)


def _emit(report: dict, as_json: bool, quiet: bool, summary_md: Path | None) -> None:
    from mcomp.cli.run_extras import append_step_summary
    from mcomp.interrupt import Terminated, say_outcome

    try:
        append_step_summary(report, summary_md)
        _print_result(report, as_json, quiet, str(summary_md) == "-")
    except (KeyboardInterrupt, Terminated) as exc:  # the message must not say "nothing"
        folder = str(Path(report["artifacts"]["model"]).parent)
        say_outcome(exc, f"the outputs in {folder} were written")
        raise


def _print_result(report: dict, as_json: bool, quiet: bool, summary_to_stdout: bool) -> None:
    from mcomp.cli.render import render_report, stderr_console
    from mcomp.report.json_text import report_json

    if not quiet:
        render_report(report, stderr_console())
    if as_json:
        click.echo(report_json(report), nl=False)
    elif summary_to_stdout:
        return
    else:
        broken = [c["name"] for c in report["constraints"] if not c["ok"]]
        status = "ok" if not broken else "LIMITS BROKEN: " + ", ".join(broken)
        click.echo(f"{status}: {report['artifacts']['model']}")


@cli.command(epilog=EPILOG)
@recipe_argument
@set_option
@json_option
@debug_option
@error_boundary
def validate(recipe: str, overrides: tuple[str, ...], as_json: bool, debug: bool) -> None:
    """Check a recipe (schema, stage options, stage order, input files) without running it.

    \b
    Examples:
      mcomp validate recipe.yaml
      mcomp validate recipe.yaml --set stages.0.prune.sparsity=0.9
    """
    import json

    from mcomp.recipe.validate import validate_recipe

    summary = validate_recipe(recipe, overrides)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{summary['file']}: ok ({' → '.join(summary['stages'])})")


@cli.command(epilog=EPILOG)
@debug_option
@error_boundary
def schema(debug: bool) -> None:
    """Print the recipe's JSON Schema (for editor completion of YAML recipes).

    \b
    Example:
      mcomp schema > mcomp-recipe.schema.json
    """
    import json

    from mcomp.recipe.json_schema import recipe_json_schema

    click.echo(json.dumps(recipe_json_schema(), indent=2))


def main() -> None:
    cli(prog_name="mcomp")


from mcomp.cli.cmd_bench import bench  # noqa: E402  (the companion commands, one module each)
from mcomp.cli.cmd_compare import compare  # noqa: E402
from mcomp.cli.cmd_eval import eval_command  # noqa: E402
from mcomp.cli.cmd_init import init  # noqa: E402
from mcomp.cli.cmd_inspect import inspect  # noqa: E402
from mcomp.cli.cmd_recipes import recipes  # noqa: E402
from mcomp.cli.cmd_report import report  # noqa: E402
from mcomp.cli.cmd_sensitivity import sensitivity  # noqa: E402

cli.add_command(inspect)
cli.add_command(eval_command)
cli.add_command(bench)
cli.add_command(compare)
cli.add_command(init)
cli.add_command(sensitivity)
cli.add_command(report)
cli.add_command(recipes)

if __name__ == "__main__":
    main()
