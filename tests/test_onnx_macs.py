"""MAC counts of ONNX graphs: Conv1d over symbolic lengths, ConvTranspose, LSTM/GRU, Einsum,
and the compute nodes whose shapes stay unknown."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mcomp.measure.onnx_macs import count_macs, count_onnx_macs
from mcomp.model.convert import torch_to_onnx
from mcomp.model.state import ModelState
from mcomp.recipe.schema import InputSpec


class AudioNet(torch.nn.Module):
    """Conv1d with a 256-tap kernel over raw audio, then a bidirectional LSTM and a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, kernel_size=256, stride=128)
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(32, 12, batch_first=True)
        self.head = torch.nn.Linear(12, 2)

    def forward(self, x):
        frames = self.conv(x).transpose(1, 2)  # (N, T, 8)
        hidden, _ = self.lstm(frames)
        hidden, _ = self.gru(hidden)
        return self.head(hidden)


def test_conv1d_and_recurrent_layers_are_counted_at_the_length_the_run_feeds():
    # setup: a model exported with a symbolic time axis, fed 32 768-sample clips
    torch.manual_seed(0)
    samples = 32768
    state = ModelState.from_torch(AudioNet().eval(), [InputSpec(name="x", shape=[1, samples])])
    exported = torch_to_onnx(state)
    frames = (samples - 256) // 128 + 1
    conv = frames * 8 * 256
    lstm = frames * 2 * 4 * 16 * (8 + 16)  # steps x directions x gates x hidden x (in + hidden)
    gru = frames * 3 * 12 * (32 + 12)
    head = frames * 12 * 2
    # act
    count = count_macs(exported, {"x": [1, samples]})
    # check
    assert count.total == conv + lstm + gru + head
    assert count.uncounted == []


def test_a_symbolic_length_without_the_run_shape_is_listed_as_uncounted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # onnxruntime drops an incomplete inference's model in the cwd
    torch.manual_seed(0)
    state = ModelState.from_torch(AudioNet().eval(), [InputSpec(name="x", shape=[1, 4096])])
    exported = torch_to_onnx(state)
    for value in exported.graph.input:  # make the time axis symbolic, as a user's file may be
        value.type.tensor_type.shape.dim[2].dim_param = "time"
    count = count_macs(exported)
    assert count.uncounted  # the Conv (and what follows) cannot be sized without a length
    assert any("(Conv)" in entry for entry in count.uncounted)
    assert count_onnx_macs(exported, {"x": [1, 4096]}) > count.total
    assert list(tmp_path.iterdir()) == []  # nothing left in the user's folder


def test_conv_transpose_and_einsum():
    """
    x (N, 4, 5, 5) ──ConvTranspose(W 4×3×2×2, stride 2)──> y (N, 3, 10, 10)
    a (N, 6, 7) ──Einsum("bij,jk->bik", B 7×9)──> z (N, 6, 9)
    """
    w = numpy_helper.from_array(np.ones((4, 3, 2, 2), np.float32), "W")
    b = numpy_helper.from_array(np.ones((7, 9), np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="up", strides=[2, 2]),
            helper.make_node("Einsum", ["a", "B"], ["z"], name="mix", equation="bij,jk->bik"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 6, 7]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 10, 10]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6, 9]),
        ],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    count = count_macs(model)
    assert count.by_node["up"] == 5 * 5 * 4 * 3 * 2 * 2  # input positions x Cin x Cout x k
    assert count.by_node["mix"] == 1 * 6 * 7 * 9


def _constant(name: str, array: np.ndarray):
    return helper.make_node(
        "Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array, name)
    )


def test_a_report_counts_constant_node_weights_and_symbolic_image_sizes(tmp_path):
    """
    x (N, 3, H, W) ──Conv(W1 4×3×3×3, pad 1)──Relu──Conv(W2 2×4×1×1)──> y (N, 2, H, W)

    The weights are Constant nodes and H, W are symbolic, as in paddle2onnx's exports (the
    PP-OCR detector): the report once said 0 parameters and counted the convolutions as if
    the image were -1 pixels wide.
    """
    # setup
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            _constant("W1", w1),
            _constant("W2", w2),
            helper.make_node("Conv", ["x", "W1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "net.onnx")
    x = rng.normal(size=(8, 3, 12, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    np.savez(tmp_path / "calibration.npz", x=x[::-1].copy())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "version: 1\nmodel: {path: net.onnx}\n"
        "data: {eval: {path: eval.npz, labels: null}, batch_size: 4,\n"
        "  calibration: {path: calibration.npz, labels: null}}\n"
        "task: regression\nmetric: cosine\nruntime: {threads: 1, latency: {runs: 2}}\n"
        "stages:\n  - quantize: {mode: auto}\n"
    )
    from tests.helpers import run_recipe

    # act
    result, _ = run_recipe(recipe, tmp_path / "out")
    # check
    baseline = result.report["baseline"]["metrics"]
    assert baseline["params"] == w1.size + w2.size
    assert baseline["macs"] == 12 * 16 * (4 * 27 + 2 * 4)  # output pixels x (Cout x Cin x k)
    assert baseline["macs_uncounted"] == []
    quantized = result.report["stages"][0]
    assert quantized["metrics"]["macs"] == baseline["macs"]
    # mode auto chooses by these counts, so it names the same total
    assert any(f"of {baseline['macs']:,} MACs" in note for note in quantized["notes"])
