"""`mcomp inspect`: a per-layer table of a torch or ONNX model, and its totals.

A row per layer holding weights (torch: leaf modules with parameters; ONNX: nodes fed by
weight initializers, directly or through DequantizeLinear) or doing matrix work (MACs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mcomp.model.state import ModelKind, ModelState

if TYPE_CHECKING:
    import onnx

# Inputs of quantized ops that hold weights; their other inputs are scales and zero points.
WEIGHT_INPUTS = {
    "QLinearConv": (3, 8),
    "QLinearMatMul": (3,),
    "ConvInteger": (1,),
    "MatMulInteger": (1,),
}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def inspect_model(state: ModelState) -> dict[str, Any]:
    """Rows (name, type, shape, params, nonzero, sparsity, macs, dtype) and totals."""
    notes: list[str] = []
    rows = (
        _torch_rows(state, notes) if state.kind == ModelKind.TORCH else _onnx_rows(state.onnx_model)
    )
    params = sum(r["params"] for r in rows)
    nonzero = sum(r["nonzero"] for r in rows)
    macs = [r["macs"] for r in rows]
    return {
        "model": state.source,
        "format": str(state.kind),
        "inputs": [i.model_dump() for i in state.inputs],
        "layers": rows,
        "totals": {
            "params": params,
            "nonzero": nonzero,
            "sparsity": round(1 - nonzero / params, 6) if params else 0.0,
            "macs": None if None in macs else sum(macs),
            "int8_layers": sum(r["dtype"] in ("int8", "uint8") for r in rows),
        },
        "notes": notes,
    }


def _row(
    name: str, kind: str, shape: list[int], params: int, nonzero: int, macs: int | None, dtype: str
) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "shape": shape,
        "params": params,
        "nonzero": nonzero,
        "sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "macs": macs,
        "dtype": dtype,
    }


def _torch_rows(state: ModelState, notes: list[str]) -> list[dict[str, Any]]:
    import torch

    macs = _torch_layer_macs(state, notes)
    rows = []
    for name, module in state.module.named_modules():
        weights = list(module.parameters(recurse=False))
        if not weights:
            continue
        main = getattr(module, "weight", None)
        main = main if isinstance(main, torch.Tensor) else weights[0]
        rows.append(
            _row(
                name or "(root)",
                type(module).__name__,
                list(main.shape),
                sum(t.numel() for t in weights),
                sum(int(torch.count_nonzero(t)) for t in weights),
                None if macs is None else macs.get(name, 0),
                str(main.dtype).removeprefix("torch."),
            )
        )
    return rows


def _torch_layer_macs(state: ModelState, notes: list[str]) -> dict[str, int] | None:
    """MACs per module from torch's flop counter; None when the input shape is unknown."""
    if not state.inputs:
        notes.append("MACs unknown: the file does not say its input shape; pass --input-shape")
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mcomp.model.convert import example_inputs

    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            state.module(*example_inputs(state, batch=1))
    except Exception as exc:
        notes.append(
            f"MACs unknown: the model did not run on inputs "
            f"{[i.shape for i in state.inputs]} ({type(exc).__name__})"
        )
        return None
    root = type(state.module).__name__ + "."
    # Keys are "<RootClass>.<qualified name>"; parents repeat their children's counts.
    return {
        key.removeprefix(root): sum(counts.values()) // 2
        for key, counts in counter.get_flop_counts().items()
        if key.startswith(root)
    }


def _onnx_rows(model: onnx.ModelProto) -> list[dict[str, Any]]:
    from onnx import numpy_helper

    from mcomp.measure.onnx_macs import node_macs_by_name

    inits = {i.name: i for i in model.graph.initializer}
    dequantized = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }
    macs = node_macs_by_name(model)
    rows = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in QDQ_OPS:
            continue
        weights = [inits[w] for w in _weight_names(node, inits, dequantized)]
        node_macs = macs.get(node.name or f"#{index}", 0)
        if not weights and not node_macs:
            continue
        arrays = [numpy_helper.to_array(w) for w in weights]
        rows.append(
            _row(
                node.name or f"{node.op_type}#{index}",
                node.op_type,
                list(arrays[0].shape) if arrays else [],
                sum(a.size for a in arrays),
                sum(int(np.count_nonzero(a)) for a in arrays),
                node_macs,
                str(arrays[0].dtype) if arrays else "float32",
            )
        )
    return rows


def _weight_names(node, inits: dict, dequantized: dict[str, str]) -> list[str]:
    """Initializers holding this node's weights (through DequantizeLinear for QDQ graphs)."""
    positions = WEIGHT_INPUTS.get(node.op_type, range(len(node.input)))
    names = []
    for position in positions:
        if position >= len(node.input):
            continue
        name = dequantized.get(node.input[position], node.input[position])
        init = inits.get(name)
        if init is None:
            continue
        if node.op_type in WEIGHT_INPUTS or _is_weight(init):
            names.append(name)
    return names


def _is_weight(init) -> bool:
    """Float or int8 tensors with more than one element; scalars are scales and constants."""
    from onnx import TensorProto

    size = int(np.prod(init.dims)) if len(init.dims) else 1
    kinds = (
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BFLOAT16,
        TensorProto.INT8,
        TensorProto.UINT8,
    )
    return init.data_type in kinds and size > 1
