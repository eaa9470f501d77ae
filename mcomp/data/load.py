"""Data splits as named numpy arrays: `.npz` files, the built-in digits set, Python factories.

Every split is materialised as `Split` (one array per model input, optional labels) so that
torch training, onnxruntime evaluation and calibration read the same samples.
"""

from __future__ import annotations

import importlib.resources
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcomp.errors import DataError
from mcomp.factory import import_factory
from mcomp.paths import check_regular_file
from mcomp.recipe.schema import DataSpec, SplitSpec

SPLITS = ("train", "calibration", "eval")


@dataclass
class Split:
    """One split: `inputs[name]` has shape (N, ...) per model input; `labels` (N, ...) or None."""

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        for start in range(0, len(self), batch_size):
            end = start + batch_size
            yield (
                {k: v[start:end] for k, v in self.inputs.items()},
                None if self.labels is None else self.labels[start:end],
            )

    def subset(self, indices: np.ndarray, name: str | None = None) -> Split:
        return Split(
            name or self.name,
            {k: v[indices] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[indices],
        )


@dataclass
class Datasets:
    train: Split | None
    calibration: Split | None
    eval: Split | None
    # the splits whose inputs make up `train` (`data.train_from`); empty: its own file
    train_from: tuple[str, ...] = ()

    def train_notes(self) -> list[str]:
        """What the report says of a train split made of other splits' inputs."""
        if not self.train_from:
            return []
        notes = [f"trained on the inputs of data.{', data.'.join(self.train_from)} (train_from)"]
        if "eval" in self.train_from:
            notes.append("the eval figures are optimistic: the model was trained on its inputs")
        return notes

    def first_available(self) -> Split:
        for split in (self.eval, self.calibration, self.train):
            if split is not None:
                return split
        raise DataError("data: the recipe names no data split; add `data: {eval: ...}`")


def load_datasets(spec: DataSpec, *, base_dir: Path, seed: int) -> Datasets:
    """Load every split the recipe names; calibration defaults to a fixed sample of train."""
    loaded = {
        name: _load_split(name, getattr(spec, name), base_dir)
        for name in SPLITS
        if getattr(spec, name) is not None
    }
    calibration = loaded.get("calibration")
    if calibration is None and "train" in loaded:
        train = loaded["train"]
        rng = np.random.default_rng(seed)
        count = min(spec.calibration_samples, len(train))
        calibration = train.subset(np.sort(rng.permutation(len(train))[:count]), "calibration")
    elif calibration is not None and len(calibration) > spec.calibration_samples:
        calibration = calibration.subset(np.arange(spec.calibration_samples))
    train = loaded.get("train")
    if spec.train_from:
        train = inputs_of([loaded[name] for name in spec.train_from if name in loaded])
    return Datasets(
        train=train,
        calibration=calibration,
        eval=loaded.get("eval"),
        train_from=tuple(spec.train_from),
    )


def inputs_of(splits: list[Split]) -> Split | None:
    """One unlabelled train split of the inputs of `splits` (`data.train_from`), arrays
    matched by position."""
    if not splits:
        return None
    first = splits[0]
    for other in splits[1:]:
        shapes = [a.shape[1:] for a in first.inputs.values()]
        if [a.shape[1:] for a in other.inputs.values()] != shapes:
            raise DataError(
                f"data.train_from: the inputs of data.{first.name} and data.{other.name} "
                "differ in number or shape; they cannot make one train split"
            )
    names = list(first.inputs)
    arrays = {
        name: np.concatenate([list(split.inputs.values())[i] for split in splits])
        for i, name in enumerate(names)
    }
    return Split("train", arrays, None)


def _load_split(name: str, spec: SplitSpec, base_dir: Path) -> Split:
    if spec.builtin == "digits":
        split = _digits(name)
        if spec.labels is None:  # `labels: null`: its images alone, as unlabelled data
            split = Split(name, split.inputs, None)
    elif spec.path is not None:
        split = _npz(name, spec, base_dir / spec.path)
    else:
        split = _from_factory(name, spec, base_dir)
    if len(split) == 0:
        raise DataError(f"data.{name}: the split has no samples")
    if spec.samples is not None and spec.samples < len(split):
        split = split.subset(np.arange(spec.samples))
    return split


def _digits(name: str) -> Split:
    resource = importlib.resources.files("mcomp.data").joinpath("digits.npz")
    with importlib.resources.as_file(resource) as path, np.load(path) as arrays:
        part = "eval" if name == "eval" else "train"
        return Split(name, {"x": arrays[f"x_{part}"]}, arrays[f"y_{part}"])


def _npz(name: str, spec: SplitSpec, path: Path) -> Split:
    check_regular_file(path, f"data.{name}.path", DataError, ".npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"data.{name}.path: {path} holds one array (a .npy file), not named "
                "arrays; save it with np.savez(path, x=inputs, y=labels)"
            )
        with loaded as arrays:
            available = list(arrays.files)
            wanted = spec.inputs or ["x"]
            missing = [
                a for a in wanted + ([spec.labels] if spec.labels else []) if a not in available
            ]
            if missing:
                raise DataError(
                    f"data.{name}: {path} has no array(s) {missing}; it has "
                    f"{available}. Name the arrays with `inputs: [...]` and "
                    "`labels: ...` (or `labels: null`)"
                )
            inputs = {a: arrays[a] for a in wanted}
            labels = arrays[spec.labels] if spec.labels else None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"data.{name}.path: {path} is not a readable .npz file ({exc})") from None
    _check_lengths(name, inputs, labels)
    return Split(name, inputs, labels)


def _from_factory(name: str, spec: SplitSpec, base_dir: Path) -> Split:
    from mcomp.factory import factory_paths, user_code

    factory = import_factory(spec.factory or "", key=f"data.{name}.factory")
    args = factory_paths(
        spec.factory_args, base_dir, key=f"data.{name}.factory_args", error=DataError
    )
    try:
        with user_code():
            obj = factory(**args)
    except Exception as exc:  # the user's code failed: say where, not "unexpected error"
        raise DataError(
            f"data.{name}.factory: {spec.factory} raised {type(exc).__name__}: "
            f"{exc} (check the factory and `factory_args`)"
        ) from None
    try:
        with user_code():
            return _read_loader(name, spec, obj)
    except DataError:
        raise
    except Exception as exc:  # the Dataset's own __getitem__ / __iter__ / collate failed
        raise DataError(
            f"data.{name}.factory: reading the data from {spec.factory} failed: "
            f"{type(exc).__name__}: {str(exc)[:200]} (check its Dataset)"
        ) from None


def _read_loader(name: str, spec: SplitSpec, obj) -> Split:
    import torch.utils.data as tud

    loader = obj if isinstance(obj, tud.DataLoader) else tud.DataLoader(obj, batch_size=256)
    names = spec.inputs or ["x"]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[np.ndarray] = []
    for batch in loader:
        if isinstance(batch, dict):
            parts = [batch[n] for n in names]
            label = batch.get(spec.labels) if spec.labels else None
        else:
            items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
            parts, label = (
                items[: len(names)],
                (items[len(names)] if len(items) > len(names) else None),
            )
        for n, part in zip(names, parts, strict=True):
            chunks[n].append(np.asarray(part))
        if label is not None and spec.labels:
            labels.append(np.asarray(label))
    inputs = {n: np.concatenate(c) for n, c in chunks.items()}
    split = Split(name, inputs, np.concatenate(labels) if labels else None)
    _check_lengths(name, split.inputs, split.labels)
    return split


def _check_lengths(name: str, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> None:
    lengths = {k: len(v) for k, v in inputs.items()}
    if labels is not None:
        lengths["labels"] = len(labels)
    if len(set(lengths.values())) > 1:
        raise DataError(f"data.{name}: arrays have different numbers of samples: {lengths}")
