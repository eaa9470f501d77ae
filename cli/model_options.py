"""click options shared by the companion commands (inspect, eval, bench, compare), and the
small conversions from their values to core objects."""

from __future__ import annotations

from pathlib import Path

import click

model_argument = click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
factory_option = click.option(
    "--factory",
    metavar="PKG.MOD:FN",
    help="For a state_dict: the function that builds the module, e.g. mypkg.models:resnet.",
)
python_path_option = click.option(
    "--python-path",
    "python_path",
    multiple=True,
    metavar="DIR",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder put on sys.path so --factory imports (repeatable).",
)
input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="D1,D2,...",
    help="Shape of one sample without the batch axis, e.g. 1,8,8 (repeat per input), when "
    "neither the file nor the data says.",
)
allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True, help="Allow loading a whole pickled module (runs code)."
)
output_option = click.option(
    "--output",
    "output",
    metavar="NAME|INDEX",
    help="For a model with several outputs (a tuple, a dict, a Hugging Face ModelOutput, "
    "several ONNX outputs): the one the metric and the agreement read, by name or index "
    "(a recipe's model.output; default the first).",
)
threads_option = click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    help="Threads for torch and onnxruntime (default: MCOMP_THREADS, else CPU count ≤ 8).",
)
data_option = click.option(
    "--data",
    metavar="FILE.npz|digits",
    help="Evaluation data: an .npz file (arrays x and y by default) or `digits`.",
)
inputs_option = click.option(
    "--inputs",
    "input_arrays",
    multiple=True,
    metavar="NAME",
    help="Array(s) of --data fed to the model inputs, in order (default: x).",
)
labels_option = click.option(
    "--labels", metavar="NAME", help="Array of --data holding the labels (default: y if present)."
)
metric_option = click.option(
    "--metric",
    type=click.Choice(["auto", "accuracy", "mse", "mae"]),
    default="auto",
    show_default=True,
    help="Task metric computed against the labels; auto: accuracy for integer labels and "
    "class scores, mse for float labels.",
)


def model_options(command):
    """--factory, --python-path, --input-shape, --allow-pickle."""
    for option in (allow_pickle_option, input_shape_option, python_path_option, factory_option):
        command = option(command)
    return command


def data_options(command):
    """--data, --inputs, --labels, --metric."""
    for option in (metric_option, labels_option, inputs_option, data_option):
        command = option(command)
    return command


def model_ref(
    path: Path,
    factory: str | None,
    python_path: tuple[Path, ...],
    input_shapes: tuple[str, ...],
    allow_pickle: bool,
    output: str | None = None,
):
    """A `ModelRef` from the shared options."""
    from mcomp.model.open import ModelRef, parse_input_shape

    return ModelRef(
        path=path,
        factory=factory,
        python_path=list(python_path),
        input_shapes=[parse_input_shape(s) for s in input_shapes],
        allow_pickle=allow_pickle,
        output=output,
    )


def load_data(data: str | None, input_arrays: tuple[str, ...], labels: str | None):
    """The --data split, or None."""
    if data is None:
        return None
    from mcomp.data.open import load_split

    return load_split(data, inputs=list(input_arrays) or None, labels=labels)


def threads_from(threads: int | None) -> int:
    from mcomp.recipe.schema import RuntimeSpec
    from mcomp.run.threads import resolve_threads

    return resolve_threads(RuntimeSpec(), threads)


def echo_json(result: dict) -> None:
    import json

    click.echo(json.dumps(result, indent=2))
