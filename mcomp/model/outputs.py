"""A model's outputs as one flat list of named tensors, and the one the metric reads.

Models return a tensor, a tuple or list of them, a dict (Hugging Face's `ModelOutput` is
one), a dataclass, or nestings of these. Every part of mcomp sees the same flat list, in
the order torch's exporter writes the ONNX outputs (dict insertion order, tuple order,
dataclass field order), named by key path: `logits`, `0`, `1.start`. `None` entries (a
Hugging Face `loss` without labels) are left out, as the exporter leaves them out.

`model.output` picks the output that metrics, fidelity and the task loss read, by name or
by index into this list (default: the first); `resolve_output` turns it into the index the
`ModelState` carries, so an ONNX form of the model (whose outputs keep this order) reads the
same one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
from collections.abc import Iterator
from typing import Any

from mcomp.errors import DataError


def flatten_outputs(result: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, tensor) for every tensor in `result`, depth first."""
    import torch

    if result is None:
        return []
    if isinstance(result, torch.Tensor):
        return [(prefix or "0", result)]
    if isinstance(result, dict):
        items = list(result.items())
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        items = [(f.name, getattr(result, f.name)) for f in dataclasses.fields(result)]
    elif isinstance(result, (tuple, list)):
        items = list(enumerate(result))
    else:
        raise DataError(
            f"the model returned a {type(result).__name__}"
            + (f" at output {prefix!r}" if prefix else "")
            + "; mcomp reads tensors, and tuples, lists, dicts or dataclasses of tensors"
        )
    flat: list[tuple[str, Any]] = []
    for key, value in items:
        flat += flatten_outputs(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def output_tensors(result: Any) -> list[Any]:
    """The tensors of `result`, flattened, without their names."""
    return [tensor for _, tensor in flatten_outputs(result)]


def resolve_output(choice: str | int | None, names: list[str], key: str = "model.output") -> int:
    """The index of `choice` (a name, or an index) among the flattened output `names`."""
    if not names:
        raise DataError("the model returned no tensor; it must return at least one output")
    if choice is None:
        return 0
    if isinstance(choice, int):
        if not -len(names) <= choice < len(names):
            raise DataError(
                f"{key}: index {choice} is out of range: the model has {len(names)} "
                f"output(s): {', '.join(names)}"
            )
        return choice % len(names)
    if choice in names:
        return names.index(choice)
    close = difflib.get_close_matches(choice, names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(
        f"{key}: the model has no output {choice!r}{hint}; its outputs are: {', '.join(names)}"
    )


def pick(result: Any, index: int) -> Any:
    """The tensor at `index` of the flattened `result`."""
    return output_tensors(result)[index]


def output_names(state: Any, sample: dict[str, Any]) -> list[str]:
    """The flattened output names of `state`: the ONNX graph's outputs, or the key paths of
    what the torch module returns on `sample` (numpy arrays by input name)."""
    from mcomp.model.state import ModelKind

    if state.kind == ModelKind.ONNX:
        return [value.name for value in state.onnx_model.graph.output]
    import torch

    tensors = [torch.from_numpy(sample[spec.name]) for spec in state.inputs]
    with torch.no_grad():
        return [name for name, _ in flatten_outputs(state.module(*tensors))]


def is_flat(result: Any) -> bool:
    """A tensor, or a tuple / list of tensors: what torch's exporters take as they are."""
    import torch

    if isinstance(result, torch.Tensor):
        return True
    return isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result)


@contextlib.contextmanager
def flat_forward(module: Any, args: tuple) -> Iterator[list[str] | None]:
    """While exporting: `module` returns the flattened tuple of its outputs (a dict, a
    dataclass or a nesting becomes the list `flatten_outputs` gives), so the ONNX outputs come
    in the order every other part of mcomp reads. Yields their names for the exporter (None:
    the module's outputs were flat already and it is left alone). The forward is replaced on
    the instance, not wrapped, so parameter names (and the ONNX initializers) stay the same."""
    import torch

    with torch.no_grad():
        result = module(*args)
    if is_flat(result):
        yield None
        return
    names = [name for name, _ in flatten_outputs(result)]
    original = module.forward
    had_own = "forward" in vars(module)

    @functools.wraps(original)
    def forward(*inputs, **kwargs):
        return tuple(output_tensors(original(*inputs, **kwargs)))

    module.forward = forward
    try:
        yield names
    finally:
        if had_own:
            module.forward = original
        else:
            del module.forward


def choose_output(
    state: Any, choice: str | int | None, sample: dict[str, Any], key: str = "model.output"
) -> int:
    """`model.output` (or the command line's `key`) as an index into the flattened outputs of
    `state` on `sample`."""
    return resolve_output(choice, output_names(state, sample), key=key)
