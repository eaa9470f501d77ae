"""One data split named on the command line (`digits` or an .npz file), fitted to a model."""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import numpy as np

from mcomp.data.load import Datasets, Split, load_datasets
from mcomp.errors import DataError
from mcomp.model.state import ModelState
from mcomp.paths import check_regular_file
from mcomp.recipe.schema import DataSpec, SplitSpec

DEFAULT_LABELS = "y"


def load_split(data: str, *, inputs: list[str] | None = None, labels: str | None = None) -> Split:
    """`digits` (its 360 held-out samples) or an .npz file; labels `y` when the file has it."""
    spec: dict = {"builtin": "digits"} if data == "digits" else {"path": data}
    if data != "digits":
        path = Path(data)
        check_regular_file(path, "--data", DataError, ".npz file")
        if labels is None and DEFAULT_LABELS in _npz_names(path):
            labels = DEFAULT_LABELS
        spec.update(inputs=inputs, labels=labels)
    with _cli_names():
        datasets = load_datasets(DataSpec(eval=SplitSpec(**spec)), base_dir=Path.cwd(), seed=0)
    return datasets.eval


def fit_split(state: ModelState, split: Split, threads: int) -> Split:
    """Give the model its input signature from the data when the file has none, rename and
    cast the arrays to the model's inputs, and push two samples through (fails early)."""
    from mcomp.data.checks import check_finite
    from mcomp.model.signature import conform_datasets, probe, resolve_inputs

    datasets = Datasets(train=None, calibration=None, eval=split)
    if not state.inputs:
        state.inputs = resolve_inputs(None, state, datasets)
    with _cli_names():
        datasets = conform_datasets(datasets, state.inputs)
        check_finite(datasets)
        probe(state, datasets, threads)
    return datasets.eval


def random_inputs(state: ModelState, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the model's signature: normal floats, zeros for integer inputs; unknown
    (symbolic) sizes become 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in state.inputs:
        shape = (batch, *[d if d > 0 else 1 for d in spec.shape])
        if spec.dtype.startswith("float"):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feed


@contextlib.contextmanager
def _cli_names():
    """Say `--data`, not the recipe key `data.eval`, in errors about command-line data."""
    try:
        yield
    except DataError as exc:
        message = str(exc).replace("data.eval.path:", "--data:").replace("data.eval:", "--data:")
        message = message.replace("`inputs: [...]`", "--inputs").replace(
            "`labels: ...` (or `labels: null`)", "--labels"
        )
        raise DataError(message) from None


def _npz_names(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return list(arrays.files)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"--data: {path} is not a readable .npz file ({exc})") from None
