"""torch → ONNX conversion (fp32, dynamic batch axis, weights embedded) and the parity check."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from mcomp.errors import ParityError, StageError
from mcomp.model.outputs import flat_forward
from mcomp.model.state import ModelState

if TYPE_CHECKING:
    import onnx

DEFAULT_OPSET = 18


def example_inputs(state: ModelState, batch: int = 2) -> tuple:
    """Zero tensors matching the model's inputs; batch 2 so the exporter keeps the axis dynamic."""
    import torch

    return tuple(
        torch.zeros((batch, *[max(d, 1) for d in spec.shape]), dtype=getattr(torch, spec.dtype))
        for spec in state.inputs
    )


def torch_to_onnx(state: ModelState, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export `state.module` with torch's default (torch.export-based) exporter.

    The weights are embedded (`external_data=False`) so the model is one file, and the batch
    axis is dynamic. If the torch.export path cannot trace the model, the TorchScript-based
    exporter is tried before giving up: it still handles models torch.export cannot.
    """

    module = state.module.eval()
    args = example_inputs(state)
    names = [spec.name for spec in state.inputs]
    with flat_forward(module, args) as output_names:
        if output_names is not None and set(output_names) & set(names):
            output_names = None  # an output named like an input: the exporter's own names
        return _export(module, args, names, output_names, opset)


def _export(module, args: tuple, names: list[str], output_names, opset: int):
    import torch

    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=names,
                output_names=output_names,
                opset_version=opset,
                dynamic_shapes=tuple({0: batch} for _ in names),
            )
        return strip_debug_metadata(program.model_proto)
    except Exception as first_error:
        try:
            return _legacy_export(module, args, names, output_names, opset)
        except Exception:
            raise StageError(
                f"cannot export the model to ONNX: {type(first_error).__name__}: "
                f"{str(first_error).splitlines()[0][:300]}"
            ) from None


def strip_debug_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's debugging metadata: per-node stack traces and FX names, and the
    graph-level `pkg.torch.export.*` entries (the torch program's signature and shape
    constraints, about 4 KB of text on a 9-conv CNN, stale once the graph is rewritten).

    None of it is needed to run the model, and it would otherwise inflate the artifact (and
    the size figures in the report: on a 0.3M-parameter CNN, 1.2 % of its int8 file).
    """
    graph = model.graph
    for entry in [e for e in graph.metadata_props if e.key.startswith("pkg.torch.")]:
        graph.metadata_props.remove(entry)
    for item in (
        list(graph.node)
        + list(graph.value_info)
        + list(graph.input)
        + list(graph.output)
        + list(graph.initializer)
    ):
        del item.metadata_props[:]
        item.doc_string = ""
    return model


def _legacy_export(module, args: tuple, names: list[str], output_names, opset: int):
    import onnx
    import torch

    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=output_names,
            opset_version=min(opset, 17),
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress on stdout and torchvision notices on stderr through logging;
    stdout carries `--json` reports, so nothing of it may reach there."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_parity(
    torch_state: ModelState,
    onnx_model: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    *,
    threads: int,
    atol: float,
    rtol: float,
) -> float:
    """Compare onnxruntime's outputs with torch's on `inputs`; return the largest difference.

    Raises ParityError naming the output and the largest difference when one is out of
    tolerance.
    """
    from mcomp.measure.inference import predict_batch

    expected = predict_batch(torch_state, inputs, threads=threads)
    actual = predict_batch(torch_state.with_onnx(onnx_model), inputs, threads=threads)
    worst = 0.0
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if want.shape != got.shape:
            raise ParityError(
                f"export parity: output {index} has shape {got.shape} in "
                f"onnxruntime but {want.shape} in torch"
            )
        diff = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(got, want, atol=atol, rtol=rtol):
            raise ParityError(
                f"export parity: output {index} differs from torch by up to "
                f"{diff:.3g} (atol {atol}, rtol {rtol}); raise `export.atol` if "
                "that is expected, else report the model's unsupported ops"
            )
    return worst
