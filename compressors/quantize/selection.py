"""What the quantize stage quantizes: the mode `auto` resolves to, and the nodes the recipe
leaves in float; both checked before anything runs."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from mcomp.compressors.quantize.options import QuantizeOptions
from mcomp.errors import StageError

if TYPE_CHECKING:
    from mcomp.progress import Progress
    from mcomp.stage import StageContext


def check_quantize_options(
    onnx_model, options: QuantizeOptions, ctx: StageContext, warned: set[str]
) -> None:
    """Reject options that cannot work on this model and data, before any stage runs.

    `onnx_model` is None for a torch model (its node names exist only after export)."""
    if options.mode == "static" and not ctx.datasets.calibration:
        raise StageError(
            "quantize: static mode needs calibration samples; give "
            "`data.calibration` or `data.train`, or use `mode: dynamic`"
        )
    if options.op_types and options.mode != "weight4":
        check_op_types(options.op_types, options.mode)
    if onnx_model is not None:
        excluded_nodes(onnx_model, options, ctx.progress, warned)


SPARSE_WEIGHTS = 0.1  # share of exact zeros from which weights count as pruned


def resolve_types(options: QuantizeOptions, model) -> QuantizeOptions:
    """`options` with every `auto` type decided for this CPU and this model: the weight
    type, 7-bit weights, symmetric weights (on for sparse weights, so pruned zeros stay
    one byte value)."""
    import platform

    from mcomp.compressors.quantize.options import effective_reduce_range, effective_weight_type
    from mcomp.measure.cpu_features import cpu_features

    isa, machine = cpu_features(), platform.machine()
    update: dict = {}
    if options.symmetric_weights == "auto":
        update["symmetric_weights"] = weight_sparsity(model) >= SPARSE_WEIGHTS
    options = options.model_copy(update=update)
    update = {
        "weight_type": effective_weight_type(options, isa, machine),
        "reduce_range": effective_reduce_range(options, isa, machine),
    }
    return options.model_copy(update=update)


def weight_sparsity(model) -> float:
    """The share of exact zeros among the weights of Conv/Gemm/MatMul nodes."""
    import numpy as np
    from onnx import numpy_helper

    weights = {
        node.input[1]
        for node in model.graph.node
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1
    }
    total = zeros = 0
    for init in model.graph.initializer:
        if init.name in weights:
            array = numpy_helper.to_array(init)
            total += array.size
            zeros += int(np.count_nonzero(array == 0))
    return zeros / total if total else 0.0


def resolve_mode(
    model, requested: str, input_shapes: dict[str, list[int]] | None = None
) -> tuple[str, str]:
    """(mode, why). `auto`: dynamic when MatMul/Gemm carry most MACs (transformers, MLPs),
    else static. Dynamic never quantizes Conv, so a conv net always gets static."""
    if requested != "auto":
        return requested, ""
    from mcomp.measure.onnx_macs import CONV_OPS, node_macs_by_name

    conv_ops = {node.name for node in model.graph.node if node.op_type in CONV_OPS}
    macs = node_macs_by_name(model, input_shapes)
    conv = sum(m for name, m in macs.items() if name in conv_ops)
    total = sum(macs.values())
    share = conv / total if total else 0.0
    mode = "dynamic" if total and share < 0.5 else "static"
    return mode, f"Conv carries {share:.0%} of {total:,} MACs"


def excluded_nodes(
    model, options: QuantizeOptions, progress: Progress, warned: set[str]
) -> set[str]:
    """Node names matched by `exclude_nodes` globs or `exclude_op_types`; warns once per
    pattern that matches nothing (`warned` holds the patterns already warned about)."""
    excluded = set()
    nodes = [(node.name, node.op_type) for node in model.graph.node]
    for pattern in options.exclude_nodes:
        matched = {name for name, _ in nodes if fnmatch.fnmatchcase(name, pattern)}
        excluded |= matched
        if not matched and pattern not in warned:
            warned.add(pattern)
            progress.warn(
                f"quantize: exclude_nodes pattern {pattern!r} matches no node "
                f"(e.g. {', '.join(n for n, _ in nodes[:3])})"
            )
    for op_type in options.exclude_op_types:
        matched = {name for name, op in nodes if op == op_type}
        excluded |= matched
        if not matched and op_type not in warned:
            warned.add(op_type)
            progress.warn(
                f"quantize: exclude_op_types entry {op_type!r} matches no "
                f"node; the model has {sorted({op for _, op in nodes})}"
            )
    return excluded


def check_op_types(op_types: list[str], mode: str) -> None:
    from onnxruntime.quantization import registry

    known = (
        set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry)
        if mode == "static"
        else set(registry.IntegerOpsRegistry)
    )
    unknown = [op for op in op_types if op not in known]
    if unknown:
        raise StageError(
            f"quantize.op_types: onnxruntime cannot {mode}-quantize {unknown}; "
            f"quantizable: {', '.join(sorted(known))}"
        )
