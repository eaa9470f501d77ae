"""Rescaling a quantized model to another method's ranges (compressors/quantize/rescale.py)
gives exactly the file onnxruntime makes from those ranges.

A tiny real CNN with the ops whose activations share or fold quantization parameters
(ReLU, MaxPool, Concat, Add, a depthwise conv, Gemm with a bias and `beta`), and a dead
output channel (weights near 1e-30, a small bias), for which onnxruntime enlarges the
weight's scale so that the int32 bias does not clip, by how much depending on the input
scale. Each quantization is onnxruntime's `quantize_static` with every activation's range
as a tensor override, as the quantize stage calls it.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto

SETTINGS = {"per_channel": True, "reduce_range": False}


def _build():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.branch = nn.Conv2d(8, 8, 1)
            self.mix = nn.Conv2d(16, 8, 1)
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = nn.functional.max_pool2d(x, 2)
            y = torch.relu(self.depthwise(x))
            z = torch.cat([y, self.branch(x)], dim=1)
            z = torch.relu(self.mix(z)) + x
            return self.head(z.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # a dead channel, as pruned or collapsed pretrained ones are
        net.mix.weight[3] = 1e-30
        net.mix.bias[3] = 1e-3
        net.branch.weight[5] = 1e-30  # reads the MaxPool's output
        net.branch.bias[5] = 1e-3
    return net


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    from mcomp.compressors.quantize.ranges import activation_ranges
    from mcomp.compressors.quantize.statistics import collect_statistics
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    folder = tmp_path_factory.mktemp("rescale")
    state = ModelState.from_torch(_build(), [InputSpec(name="x", shape=[3, 16, 16])])
    fp32 = torch_to_onnx(state)
    path = folder / "fp32.onnx"
    onnx.save(fp32, path)
    x = np.random.default_rng(0).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    stats = collect_statistics(fp32, {"x": x}, threads=1, histograms=False, batch_size=16)
    return {
        "folder": folder,
        "path": path,
        "fp32": fp32,
        "x": x,
        "ranges": activation_ranges(stats, "minmax"),
    }


def _quantize(cnn, ranges, name: str) -> onnx.ModelProto:
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": cnn["x"][:1]}])

        def get_next(self):
            return next(self.batches, None)

    target = cnn["folder"] / name
    with contextlib.redirect_stdout(io.StringIO()):
        q.quantize_static(
            str(cnn["path"]), str(target), Reader(), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            extra_options={"TensorQuantOverrides": ranges, "ActivationSymmetric": False,
                           "WeightSymmetric": True},
            **SETTINGS,
        )  # fmt: skip
    return onnx.load(str(target))


def _scaled(ranges, factor: float, only=None):
    return {
        name: [{key: np.float32(value * (factor if only is None or name in only else 1.0))
                for key, value in entry[0].items()}]
        for name, entry in ranges.items()
    }  # fmt: skip


def _rescale(cnn, base, base_ranges, ranges):
    from mcomp.compressors.quantize.rescale import rescale

    return rescale(
        base, base_ranges, ranges, cnn["fp32"], activation_type=TensorProto.UINT8,
        symmetric=False, weight_symmetric=True, reduce_range=SETTINGS["reduce_range"],
    )  # fmt: skip


def _conv_input(model, layer: str) -> str:
    return next(n.input[0] for n in model.graph.node if n.op_type == "Conv" and layer in n.input[1])


@pytest.mark.parametrize("factor", [0.5, 1.7])
def test_rescaled_model_is_the_file_onnxruntime_makes_from_the_new_ranges(cnn, factor):
    base = _quantize(cnn, cnn["ranges"], "base.onnx")
    other = _scaled(cnn["ranges"], factor)
    expected = _quantize(cnn, other, f"other{factor}.onnx")
    got = _rescale(cnn, base, cnn["ranges"], other)
    assert got is not None
    assert got.SerializeToString() == expected.SerializeToString()
    # and the ranges did change the file: scales and int32 biases differ from the base's
    assert got.SerializeToString() != base.SerializeToString()


@pytest.mark.parametrize("layer, channel", [("mix", 3), ("branch", 5)])
def test_a_dead_channels_weight_scale_is_enlarged_as_onnxruntime_does(cnn, layer, channel):
    """A smaller range at a dead channel's conv input makes onnxruntime enlarge that
    channel's weight scale further (and quantize its weights again); rescaling does too.
    After the MaxPool (`branch`), onnxruntime decides that from the MaxPool output's own
    range, while the Q/DQ pair the conv reads, and so its bias scale, are the MaxPool
    input's."""
    from onnx import numpy_helper

    base = _quantize(cnn, cnn["ranges"], "base.onnx")
    tensor = _conv_input(cnn["fp32"], layer)
    other = _scaled(cnn["ranges"], 0.01, only={tensor})
    expected = _quantize(cnn, other, f"dead-{layer}.onnx")
    weights = {i.name: numpy_helper.to_array(i) for i in base.graph.initializer}
    adjusted = {i.name: numpy_helper.to_array(i) for i in expected.graph.initializer}
    scale = next(name for name in weights if layer in name and name.endswith("weight_scale"))
    assert adjusted[scale][channel] > weights[scale][channel]  # the case this test is about
    got = _rescale(cnn, base, cnn["ranges"], other)
    assert got is not None and got.SerializeToString() == expected.SerializeToString()


def test_a_bias_that_clips_in_onnxruntime_clips_the_same(cnn):
    """The MaxPool's input range shrunk, its output's own range not: onnxruntime keeps the
    dead channel's weight scale (decided from the output's own scale) but quantizes the
    bias with the shared, smaller input scale, and the int32 bias clips."""
    from onnx import numpy_helper

    base = _quantize(cnn, cnn["ranges"], "base.onnx")
    pool = next(n for n in cnn["fp32"].graph.node if n.op_type == "MaxPool")
    other = _scaled(cnn["ranges"], 0.01, only={pool.input[0]})
    expected = _quantize(cnn, other, "clipped.onnx")
    biases = {i.name: numpy_helper.to_array(i) for i in expected.graph.initializer}
    bias = next(name for name in biases if "branch" in name and name.endswith("bias_quantized"))
    assert abs(int(biases[bias][5])) == 2**31 - 1  # the case this test is about
    got = _rescale(cnn, base, cnn["ranges"], other)
    assert got is not None and got.SerializeToString() == expected.SerializeToString()


def test_anything_it_cannot_reproduce_is_left_to_onnxruntime(cnn):
    base = _quantize(cnn, cnn["ranges"], "base.onnx")
    # ranges for other tensors than the base's
    fewer = dict(list(cnn["ranges"].items())[1:])
    assert _rescale(cnn, base, cnn["ranges"], fewer) is None
    # overrides beyond rmin/rmax (a fixed scale)
    fixed = {**cnn["ranges"], "x": [{"scale": np.float32(0.1), "zero_point": np.uint8(0)}]}
    assert _rescale(cnn, base, cnn["ranges"], fixed) is None
    # a base that does not come from the ranges it is said to come from
    assert _rescale(cnn, base, _scaled(cnn["ranges"], 2.0), cnn["ranges"]) is None
