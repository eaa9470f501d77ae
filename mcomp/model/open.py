"""Open a model named on the command line (not in a recipe): any format `load_model` reads,
plus the command-line ways to say what a file cannot (factory, python path, input shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mcomp.errors import MCompError, ModelLoadError
from mcomp.factory import extend_python_path
from mcomp.model.state import ModelState
from mcomp.paths import check_regular_file
from mcomp.recipe.schema import InputSpec, ModelFormat, ModelSpec

CLI_HINT = " (on the command line: --factory pkg.mod:fn, --python-path DIR, --allow-pickle)"


@dataclass
class ModelRef:
    """A model file and what the command line adds to it."""

    path: Path
    factory: str | None = None
    python_path: list[Path] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    allow_pickle: bool = False
    output: str | None = None  # --output: a name or an index among the model's outputs


def parse_input_shape(text: str) -> list[int]:
    """`1,8,8` → [1, 8, 8] (one sample, without the batch axis)."""
    try:
        dims = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise MCompError(
            f"--input-shape {text!r}: expected positive integers like 1,8,8 "
            "(one sample, without the batch axis)"
        )
    return dims


def open_model(ref: ModelRef, threads: int | None = None) -> ModelState:
    """Load the file (format from its content); inputs from the file, else --input-shape.

    `inputs` stays empty when neither says; callers with data fill it from the arrays. For a
    torch model, torch gets `threads` intra-op threads.
    """
    path = ref.path
    detect_model_format(path)  # a clean one-line error for a missing or unknown file
    extend_python_path(ref.python_path)
    from mcomp.model.load import load_model

    spec = ModelSpec(path=str(path.resolve()), factory=ref.factory, allow_pickle=ref.allow_pickle)
    try:
        state = load_model(spec, base_dir=Path.cwd())
    except MCompError as exc:
        message = str(exc).removeprefix("model.path: ")
        if "model.factory" in message or "allow_pickle" in message:
            message += CLI_HINT
        raise type(exc)(message) from None
    if threads is not None and state.module is not None:
        from mcomp.run.threads import apply_threads

        apply_threads(threads)
    if ref.input_shapes:
        names = (
            ["x"] if len(ref.input_shapes) == 1 else [f"x{i}" for i in range(len(ref.input_shapes))]
        )
        if state.inputs and len(state.inputs) == len(ref.input_shapes):
            names = [spec.name for spec in state.inputs]
        state.inputs = [
            InputSpec(name=name, shape=shape)
            for name, shape in zip(names, ref.input_shapes, strict=True)
        ]
    return state


def select_output(state: ModelState, ref: ModelRef, feed: dict) -> None:
    """--output as the output the metric and the agreement read (`model.output` of a recipe),
    checked on two samples of `feed`; without it the first output."""
    if ref.output is None:
        return
    from mcomp.model.outputs import choose_output

    text = ref.output.strip()
    choice: str | int = int(text) if text.lstrip("-").isdigit() else text
    sample = {name: array[:2] for name, array in feed.items()}
    state.output = choose_output(state, choice, sample, key="--output")


def detect_model_format(path: Path) -> ModelFormat:
    """The file's format from its content; errors name the file, not a recipe key."""
    from mcomp.model.load import detect_format

    check_regular_file(path, str(path), ModelLoadError, "model file")
    try:
        return detect_format(path)
    except ModelLoadError as exc:
        raise ModelLoadError(str(exc).removeprefix("model.path: ")) from None


def same_signature(a: list[InputSpec], b: list[InputSpec]) -> bool:
    """Same number of inputs, dtypes and per-sample shapes (-1 matches any size)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.dtype != y.dtype or len(x.shape) != len(y.shape):
            return False
        if any(-1 not in (p, q) and p != q for p, q in zip(x.shape, y.shape, strict=True)):
            return False
    return True


def describe_signature(inputs: list[InputSpec]) -> str:
    return ", ".join(f"{i.name}{tuple(i.shape)}:{i.dtype}" for i in inputs) or "unknown"
