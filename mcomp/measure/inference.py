"""Run a model (torch or onnxruntime) on numpy inputs."""

from __future__ import annotations

import numpy as np

from mcomp.data.load import Split
from mcomp.model.outputs import output_tensors
from mcomp.model.state import ModelKind, ModelState


def predict_batch(
    state: ModelState, inputs: dict[str, np.ndarray], *, threads: int
) -> list[np.ndarray]:
    """All outputs of one forward pass, as numpy arrays."""
    if state.kind == ModelKind.ONNX:
        from mcomp.measure.ort_session import run_in_calls

        # large samples (images) go in calls of a few: their activations stay in cache
        return run_in_calls(onnx_session(state, threads), _onnx_feed(state, inputs))
    import torch

    device = next(state.module.parameters(), torch.zeros(0)).device
    tensors = [
        torch.from_numpy(np.ascontiguousarray(inputs[spec.name])).to(device)
        for spec in state.inputs
    ]
    with torch.no_grad():
        result = state.module(*tensors)
    return [t.detach().cpu().numpy() for t in output_tensors(result)]


def predict_split(state: ModelState, split: Split, *, batch_size: int, threads: int) -> np.ndarray:
    """The model's chosen output (`model.output`, default the first) over the whole split,
    concatenated."""
    outputs = [
        predict_batch(state, inputs, threads=threads)[state.output]
        for inputs, _ in split.batches(batch_size)
    ]
    return np.concatenate(outputs)


def _onnx_feed(state: ModelState, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {spec.name: inputs[spec.name] for spec in state.inputs}


def onnx_session(state: ModelState, threads: int, source: str | None = None):
    """The model's cached session (creating one re-optimises the graph); `source` as for
    `create_session`."""
    from mcomp.measure.ort_session import create_session

    key = (id(state.onnx_model), threads)
    cached = state.extra.get("_session")
    if cached is None or cached[0] != key:
        cached = (key, create_session(state.onnx_model.SerializeToString(), threads, source=source))
        state.extra["_session"] = cached
    return cached[1]
