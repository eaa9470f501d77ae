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
