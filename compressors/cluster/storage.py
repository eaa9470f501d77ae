"""Index-coded ONNX storage for clustered weights (the `cluster` stage's `storage: indices`).

A weight initializer with few distinct values is stored as a uint8 index tensor plus a small
fp32 codebook, and rebuilt in the graph by

    W.index (uint8) --Cast(int32)--> Gather(W.codebook, axis=0) --> W   (the original name)

Gather's indices must be int32/int64, hence the Cast; the file holds only the uint8 tensor.
onnxruntime folds Cast+Gather of initializers into a float constant when the session is created
(its constant folding, on at every optimisation level but `disable_all`), so the model runs as
fast as the float one and computes exactly the same weights: the rewrite is lossless.
`codebook[0]` is always 0.0, so the index tensor has exactly as many non-zeros as the weight
(the report's sparsity stays true). onnxruntime's quantization pre-processing folds the graph
back to float initializers, so `quantize` after `cluster` still finds and quantizes the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

MIN_ELEMENTS = 64  # below this, index + codebook + two nodes are no smaller than the tensor


def index_code(
    model: onnx.ModelProto, names: set[str] | None = None
) -> tuple[onnx.ModelProto, dict[str, dict[str, int]]]:
    """A copy of `model` with float32 initializers of <= 255 non-zero distinct values (and >= 2
    dims) stored as uint8 indices + codebook; `names` limits which initializers are considered.

    Returns (model, {initializer name: {"values": codebook size, "elements": n}}).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    coded = onnx.ModelProto()
    coded.CopyFrom(model)
    graph = coded.graph
    kept, nodes, facts = [], [], {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        codebook = _codebook(array) if (names is None or init.name in names) else None
        if codebook is None:
            kept.append(init)
            continue
        index = np.searchsorted(codebook[1:], array) + 1
        index[array == 0] = 0
        kept += [
            numpy_helper.from_array(index.astype(np.uint8), f"{init.name}.index"),
            numpy_helper.from_array(codebook, f"{init.name}.codebook"),
        ]
        nodes += [
            helper.make_node(
                "Cast",
                [f"{init.name}.index"],
                [f"{init.name}.index32"],
                name=f"{init.name}.cast",
                to=onnx.TensorProto.INT32,
            ),
            helper.make_node(
                "Gather",
                [f"{init.name}.codebook", f"{init.name}.index32"],
                [init.name],
                name=f"{init.name}.gather",
                axis=0,
            ),
        ]
        facts[init.name] = {"values": int(codebook.size), "elements": int(array.size)}
    del graph.initializer[:]
    graph.initializer.extend(kept)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)  # the weights exist before any node reads them
    return coded, facts


def _codebook(array):
    """[0.0, sorted non-zero distinct values] when it fits uint8 indices and pays off; else
    None."""
    import numpy as np

    if array.dtype != np.float32 or array.ndim < 2 or array.size < MIN_ELEMENTS:
        return None
    values = np.unique(array[array != 0])
    if values.size + 1 > 256 or 4 * (values.size + 1) + array.size >= 4 * array.size:
        return None
    return np.concatenate([np.zeros(1, np.float32), values]).astype(np.float32)
