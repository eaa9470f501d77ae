"""Match the model's input signature with the data: names, per-sample shapes, dtypes."""

from __future__ import annotations

import numpy as np

from mcomp.data.load import Datasets, Split
from mcomp.errors import DataError, ModelLoadError
from mcomp.model.state import ModelState
from mcomp.recipe.schema import InputSpec


def resolve_inputs(
    declared: list[InputSpec] | None, state: ModelState, datasets: Datasets
) -> list[InputSpec]:
    """The recipe's `model.inputs`, else the file's own signature, else the data's arrays."""
    if declared:
        if state.inputs and len(declared) != len(state.inputs):
            raise DataError(
                f"model.inputs: names {len(declared)} input(s) "
                f"{[spec.name for spec in declared]} but the model file takes "
                f"{len(state.inputs)} {[spec.name for spec in state.inputs]}"
            )
        return declared
    if state.inputs:
        return state.inputs
    splits = [s for s in (datasets.eval, datasets.calibration, datasets.train) if s is not None]
    if not splits:
        datasets.first_available()  # raises: no split at all
    candidates = [_specs_of(split) for split in splits]
    chosen = candidates[0]
    if any(specs != candidates[0] for specs in candidates):
        # The splits disagree: the signature is the one the model accepts, so that the
        # error names the split that does not fit rather than whichever came second.
        for split, specs in zip(splits, candidates, strict=True):
            if _model_accepts(state, split):
                chosen = specs
                break
    check_argument_order([spec.name for spec in chosen], forward_arguments(state.module))
    return chosen


def forward_arguments(module) -> list[str]:
    """The names of the arguments `module.forward` takes by position, in order (empty when
    they cannot be read, e.g. a TorchScript module)."""
    import inspect

    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in kinds]


def check_argument_order(names: list[str], arguments: list[str]) -> None:
    """mcomp calls the model with its data arrays by position. An array named after one of
    the forward's arguments must therefore sit at that argument's position:
    `[input_ids, token_type_ids]` would pass the token types as BERT's attention mask.
    Arrays named otherwise (`x`) go by position, as documented."""
    misplaced = [
        (name, arguments[index])
        for index, name in enumerate(names)
        if name in arguments and index < len(arguments) and arguments[index] != name
    ]
    if not misplaced:
        return
    name, receiver = misplaced[0]
    raise DataError(
        f"data: the model is called with the arrays {names} by position, so {name!r} would "
        f"be passed as its argument {receiver!r} (its forward takes "
        f"{', '.join(arguments[: len(names) + 2])}, ...). List the arrays in the forward's "
        f"order with `inputs: [...]` in every data split, giving the arguments before "
        f"{name!r} too (docs/hf.md#inputs)"
    )


def _specs_of(split: Split) -> list[InputSpec]:
    specs = []
    for name, array in split.inputs.items():
        kind = array.dtype.kind
        if kind not in "biuf":
            what = "strings" if kind in "US" else f"values of dtype {array.dtype}"
            raise DataError(f"data.{split.name}: array {name!r} holds {what}, not numbers")
        if kind == "f":
            dtype = "float32"
        elif kind == "b":
            dtype = "bool"
        else:  # uint8 images and the like: torch and onnxruntime take int64 or int32
            dtype = str(array.dtype) if str(array.dtype) in ("int64", "int32") else "int64"
        specs.append(InputSpec(name=name, shape=list(array.shape[1:]), dtype=dtype))
    return specs


def _model_accepts(state: ModelState, split: Split) -> bool:
    from mcomp.measure.inference import predict_batch

    trial = ModelState.from_torch(state.module, _specs_of(split)) if state.module else state
    sample = {
        spec.name: np.ascontiguousarray(array[:2].astype(spec.dtype, copy=False))
        for spec, array in zip(trial.inputs, split.inputs.values(), strict=True)
        if array.dtype.kind in "biuf"
    }
    if len(sample) != len(trial.inputs):
        return False
    try:
        predict_batch(trial, sample, threads=1)
    except Exception:  # any failure means "not this signature"; conform names the split
        return False
    return True


def conform_datasets(datasets: Datasets, inputs: list[InputSpec]) -> Datasets:
    """Rename each split's arrays to the model's input names (by position) and cast dtypes."""
    return Datasets(
        *(
            None if split is None else _conform(split, inputs)
            for split in (datasets.train, datasets.calibration, datasets.eval)
        ),
        train_from=datasets.train_from,
    )


def _conform(split: Split, inputs: list[InputSpec]) -> Split:
    arrays = list(split.inputs.items())
    if len(arrays) != len(inputs):
        raise DataError(
            f"data.{split.name}: the model takes {len(inputs)} input(s) "
            f"{[i.name for i in inputs]} but the split gives {len(arrays)} "
            f"{[name for name, _ in arrays]}; list them with `inputs: [...]`"
        )
    conformed = {}
    for spec, (name, array) in zip(inputs, arrays, strict=True):
        want = [d for d in spec.shape]
        got = list(array.shape[1:])
        if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
            raise DataError(
                f"data.{split.name}: array {name!r} has samples of shape {tuple(got)} "
                f"but model input {spec.name!r} expects {tuple(want)} (-1 = any)"
            )
        if array.dtype.kind not in "biuf":
            raise DataError(
                f"data.{split.name}: array {name!r} holds "
                + ("strings" if array.dtype.kind in "US" else f"dtype {array.dtype}")
                + f", not numbers; model input {spec.name!r} takes {spec.dtype}"
            )
        conformed[spec.name] = np.ascontiguousarray(array.astype(spec.dtype, copy=False))
    return Split(split.name, conformed, split.labels)


def probe(state: ModelState, datasets: Datasets, threads: int) -> None:
    """Run two samples through the model so a shape mismatch fails now, not mid-pipeline."""
    from mcomp.measure.inference import predict_batch

    _load_in_onnxruntime(state, threads)
    split = datasets.first_available()
    sample = {k: v[:2] for k, v in split.inputs.items()}
    try:
        predict_batch(state, sample, threads=threads)
    except Exception as exc:
        shapes = {k: tuple(v.shape[1:]) for k, v in sample.items()}
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"data.{split.name}: samples of shape {shapes} do not fit the model "
            f"({first}); check the data or `model.inputs`"
        ) from None


def _load_in_onnxruntime(state: ModelState, threads: int) -> None:
    """A model onnxruntime refuses is a model error: say so before the data probe below
    would blame the data for it."""
    from mcomp.measure.inference import onnx_session
    from mcomp.model.state import ModelKind

    if state.kind != ModelKind.ONNX:
        return
    try:
        onnx_session(state, threads, source=state.source or "the model")
    except ModelLoadError as exc:
        raise ModelLoadError(f"model.path: {exc}") from None
