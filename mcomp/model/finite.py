"""NaN and Inf in a model's weights: found after loading and after every stage, named by
tensor, instead of surfacing hours later as "export parity differs by up to nan"."""

from __future__ import annotations

import numpy as np

from mcomp.model.state import ModelKind, ModelState


def first_nonfinite_weight(state: ModelState) -> tuple[str, int, int] | None:
    """(tensor name, bad values, all values) of the first weight holding NaN or Inf."""
    if state.kind == ModelKind.TORCH:
        import torch

        for name, tensor in state.module.state_dict().items():
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                continue
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                return name, bad, tensor.numel()
        return None
    from onnx import numpy_helper

    for init in state.onnx_model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f":
            bad = int((~np.isfinite(array)).sum())
            if bad:
                return init.name, bad, array.size
    return None


def describe_nonfinite(found: tuple[str, int, int]) -> str:
    name, bad, total = found
    return f"weight {name!r} holds NaN or Inf ({bad} of {total} values)"
