"""Put nodes of a static QDQ model back in float by editing the graph, without quantizing
again: a floated node reads the float tensor in front of each QuantizeLinear/DequantizeLinear
pair and the fp32 weights, the way onnxruntime's `nodes_to_exclude` leaves a node, in
milliseconds instead of one `quantize_static` call per trial. The sensitivity ranking and the
fallback's trials build their candidate models this way.

    x ─Q─DQ─┐                         x ───────┐
    W_int8─DQ─ Conv ─Q─DQ─ ...   →     W_fp32 ── Conv ─Q─DQ─ ...   (Conv "in float")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FOLDED_ACTIVATIONS = {"Relu", "Clip"}


def quantized_nodes(quantized, *, compute_only: bool = False) -> list[str]:
    """Names of the nodes of a QDQ model that read at least one DequantizeLinear output (the
    nodes onnxruntime runs in int8), in graph order."""
    dequantized = {
        o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    return [
        node.name
        for node in quantized.graph.node
        if node.name
        and node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and (not compute_only or node.op_type in COMPUTE_OPS)
        and any(name in dequantized for name in node.input)
    ]


def with_nodes_in_float(quantized, fp32, names: set[str]) -> onnx.ModelProto:
    """A copy of `quantized` (static QDQ) with the nodes `names` reading float inputs and the
    fp32 model's weights; Q/DQ nodes and initializers left unused are removed."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}
    fp32_nodes = {node.name: node for node in fp32.graph.node if node.name}
    fp32_weights = {init.name: init for init in fp32.graph.initializer}
    restore = _FoldedActivations(graph, fp32, fp32_weights)
    for node in list(graph.node):
        if node.name not in names:
            continue
        source = fp32_nodes.get(node.name)
        for index, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in initializers:  # a quantized weight or bias: the fp32 one
                if source is not None and index >= len(source.input):
                    continue  # a bias that bias correction gave a node without one
                original = source.input[index] if source is not None else None
                if original in fp32_weights:
                    # the quantizer names the DequantizeLinear output like the fp32 weight
                    fresh = f"{original}_fp32" if original in producers else original
                    if fresh not in initializers:
                        weight = onnx.TensorProto()
                        weight.CopyFrom(fp32_weights[original])
                        weight.name = fresh
                        graph.initializer.append(weight)
                        initializers.add(fresh)
                    node.input[index] = fresh
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                # the float activation before the pair, with its activation put back where
                # the quantizer folded a Relu/Clip into the range
                node.input[index] = restore.tensor(q.input[0])
        if source is not None and len(node.input) > len(source.input):
            # in float the node is the fp32 one: without the correction of int8 error
            del node.input[len(source.input) :]
    _remove_unused(graph)
    return model


class _FoldedActivations:
    """onnxruntime's quantizer removes a Relu or Clip that follows a quantized node (the
    int8 range clips instead) and gives its output name to the node before it: that float
    tensor is then the value *before* the activation. A floated reader gets the activation
    back, as a copy of the fp32 model's node."""

    def __init__(self, graph, fp32, fp32_weights) -> None:
        kept = {node.name for node in graph.node}
        self._graph, self._fp32_weights = graph, fp32_weights
        self._folded = {
            node.output[0]: node
            for node in fp32.graph.node
            if node.op_type in FOLDED_ACTIVATIONS and node.name and node.name not in kept
        }
        self._restored: dict[str, str] = {}

    def tensor(self, name: str) -> str:
        activation = self._folded.get(name)
        if activation is None:
            return name
        if name not in self._restored:
            import onnx

            copy = onnx.NodeProto()
            copy.CopyFrom(activation)
            copy.name = f"{activation.name}_float"
            copy.input[0] = name
            copy.output[0] = f"{name}_float"
            present = {init.name for init in self._graph.initializer}
            for extra in copy.input[1:]:  # Clip's min and max
                if extra and extra not in present and extra in self._fp32_weights:
                    self._graph.initializer.append(self._fp32_weights[extra])
            # right after the node that writes `name`: the graph stays topologically sorted
            nodes = list(self._graph.node)
            writer = next((i for i, n in enumerate(nodes) if name in n.output), -1)
            self._graph.node.insert(writer + 1, copy)
            self._restored[name] = copy.output[0]
        return self._restored[name]


def _remove_unused(graph) -> None:
    """Drop nodes whose outputs nothing reads (repeatedly) and initializers nothing reads."""
    outputs = {value.name for value in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    for init in [init for init in graph.initializer if init.name not in read]:
        graph.initializer.remove(init)
