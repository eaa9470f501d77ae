"""Train/eval mode for every torch form mcomp loads, and the kind of each layer.

A `torch.export` program's `module()` refuses `train()` and `eval()` (its graph fixed how
BatchNorm and dropout behave when it was exported, normally eval): training it keeps that
behaviour, which is what recovering a pretrained model wants anyway. TorchScript modules
name their original class in `original_name`; an exported program's submodules are plain
`Module`s holding parameters, so their kind is read from the graph op that uses the weight.
"""

from __future__ import annotations

import contextlib
from typing import Any

GRAPH_OPS = {  # aten op of a torch.export graph -> the layer type it computes
    "aten.linear.default": "Linear",
    "aten.conv1d.default": "Conv1d",
    "aten.conv2d.default": "Conv2d",
    "aten.conv3d.default": "Conv3d",
}


def set_training(module: Any, training: bool) -> None:
    """`module.train(training)`, a no-op on an exported program's module."""
    with contextlib.suppress(NotImplementedError):
        module.train(training)


def is_exported(module: Any) -> bool:
    """A `torch.export` program's module, or a copy of it: a GraphModule whose graph calls
    aten operators on its parameters (no layer modules left)."""
    import torch

    if not isinstance(module, torch.fx.GraphModule):
        return False
    return any(isinstance(node.target, torch._ops.OpOverload) for node in module.graph.nodes)


def is_scripted(module: Any) -> bool:
    """A TorchScript module."""
    import torch

    return isinstance(module, torch.jit.ScriptModule)


def layer_kinds(root: Any) -> dict[str, str]:
    """{module name: its layer type}: the class name, TorchScript's `original_name`, or for
    an exported program the graph op that reads the module's `weight`."""
    kinds = {
        name: getattr(m, "original_name", type(m).__name__) for name, m in root.named_modules()
    }
    if not is_exported(root):
        return kinds
    for node in root.graph.nodes:
        kind = GRAPH_OPS.get(str(node.target)) if node.op == "call_function" else None
        weight = node.args[1] if kind and len(node.args) > 1 else None
        if getattr(weight, "op", None) == "get_attr" and str(weight.target).endswith(".weight"):
            kinds[str(weight.target).removesuffix(".weight")] = kind
    return kinds


def copy_module(module: Any) -> Any:
    """An independent copy of `module` whose parameters are trainable leaves: a deep copy,
    or for TorchScript a save/load round trip (its deep copy's parameters are not leaves,
    so an optimizer refuses them)."""
    import copy
    import io

    if not is_scripted(module):
        return copy.deepcopy(module)
    import torch

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    copied = torch.jit.load(buffer, map_location="cpu")
    copied.train(module.training)
    return copied
