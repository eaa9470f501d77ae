"""The quantize stage's methods on a tiny real CNN with a planted outlier channel: activation
statistics and range estimators, bias correction, floating nodes by graph edit (folded
Relu/Clip restored), the one-at-a-time sensitivity ranking, and the opset upgrade.

    x (3×12×12) ─Conv 3→8─ReLU─ DWConv 8 (groups 8) ─Clip─ Conv 1×1 8→16 ─ReLU─ mean ─ Linear

Channel 0 between the depthwise conv and the 1×1 conv is scaled ×40 and the 1×1 conv's
input column ÷40: the fp32 function is the same, but one outlier channel now decides the
per-tensor range of the 1×1 conv's input, so that conv is the sensitive node.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

OUTLIER = 40.0


def _build():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Hardtanh(0.0, 6.0 * OUTLIER),  # exported as Clip; wide for the scaled channel
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    with torch.no_grad():
        model[2].weight[0] *= OUTLIER
        model[2].bias[0] *= OUTLIER
        model[4].weight[:, 0] /= OUTLIER
    return model.eval()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> dict:
    """fp32 ONNX, calibration and eval inputs, and onnxruntime's static QDQ int8 model."""
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    folder = tmp_path_factory.mktemp("methods")
    state = ModelState.from_torch(_build(), [InputSpec(name="x", shape=[3, 12, 12])])
    fp32 = torch_to_onnx(state)
    onnx.save(fp32, folder / "fp32.onnx")
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, size=(48, 3, 12, 12)).astype(np.float32)
    evaluation = rng.uniform(0, 1, size=(32, 3, 12, 12)).astype(np.float32)

    return {
        "folder": folder,
        "fp32": fp32,
        "int8": _ort_quantize(folder, "int8.onnx", calibration),
        "calibration": calibration,
        "eval": evaluation,
    }


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _stats(cnn, histograms=True):
    from mcomp.compressors.quantize.statistics import collect_statistics

    return collect_statistics(
        cnn["fp32"], {"x": cnn["calibration"]}, threads=1, histograms=histograms, batch_size=16
    )


def test_statistics_summarise_every_activation_in_bounded_batches(cnn):
    from mcomp.compressors.quantize.statistics import activation_names

    stats = _stats(cnn)
    names = activation_names(cnn["fp32"])
    assert set(stats) == set(names)  # the graph input and every intermediate tensor
    x = stats["x"]
    assert x.low == pytest.approx(float(cnn["calibration"].min()))
    assert x.high == pytest.approx(float(cnn["calibration"].max()))
    per_sample_max = cnn["calibration"].reshape(48, -1).max(axis=1)
    assert x.mean_high == pytest.approx(float(per_sample_max.mean()), rel=1e-5)
    np.testing.assert_allclose(x.channel_mean(), cnn["calibration"].mean(axis=(0, 2, 3)), rtol=1e-5)
    assert x.histogram.sum() == cnn["calibration"].size
    # channel means (bias correction's) are summed for convolution inputs only
    conv_inputs = {n.input[0] for n in cnn["fp32"].graph.node if n.op_type == "Conv"}
    summed = {name for name, entry in stats.items() if entry.channel_sum is not None}
    assert summed == conv_inputs and len(summed) < len(stats)


def _entry(values: np.ndarray):
    from mcomp.compressors.quantize.statistics import TensorStatistics

    entry = TensorStatistics()
    entry.add(values.reshape(1, -1))
    entry.add_to_histogram(values)
    return entry


def test_mse_range_clips_a_heavy_tail_where_rounding_costs_more():
    from mcomp.compressors.quantize.ranges import mse_range

    # a Laplace tail at 4 bits: the known optimum clips near 5 scale units (Banner et al.)
    values = np.random.default_rng(1).laplace(0, 1, 200_000).astype(np.float32)
    low, high = mse_range(_entry(values), levels=16)
    assert 3.5 < high < 7.0 < values.max()
    assert -7.0 < low < -3.5 and low <= 0.0 <= high


def test_mse_range_keeps_a_lone_outlier_that_clipping_would_cost_more():
    from mcomp.compressors.quantize.ranges import activation_ranges

    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, 100_000), [200.0]]).astype(np.float32)
    mse = activation_ranges({"t": _entry(values)}, "mse")["t"][0]
    # one value 195 away costs more than 8-bit rounding of the bulk at a wide range
    assert mse["rmax"] > 150.0 and mse["rmin"] <= 0.0


def test_mean_minmax_is_within_the_global_minmax(cnn):
    from mcomp.compressors.quantize.ranges import activation_ranges

    stats = _stats(cnn, histograms=False)
    mean = activation_ranges(stats, "mean_minmax")
    minmax = activation_ranges(stats, "minmax")
    for name in stats:
        assert minmax[name][0]["rmin"] <= mean[name][0]["rmin"] <= 0.0
        assert 0.0 <= mean[name][0]["rmax"] <= minmax[name][0]["rmax"]


def test_bias_correction_reduces_the_mean_output_error_per_channel(cnn):
    # setup: the per-channel mean error of every Conv output, int8 vs fp32
    from mcomp.compressors.quantize.bias_correction import correct_biases
    from mcomp.compressors.quantize.sensitivity import run_with_intermediates

    stats = _stats(cnn, histograms=False)
    corrected = onnx.ModelProto()
    corrected.CopyFrom(cnn["int8"])
    convs = [n.name for n in cnn["fp32"].graph.node if n.op_type == "Conv"]

    def outputs_by_node(model) -> dict[str, np.ndarray]:
        # a conv's own output (before the Relu/Clip the quantizer folds into it)
        names = {n.name: n.output[0] for n in model.graph.node if n.name in convs}
        values = run_with_intermediates(model, set(names.values()), {"x": cnn["calibration"]}, 1)
        return {node: values[tensor] for node, tensor in names.items()}

    reference = outputs_by_node(cnn["fp32"])

    def mean_error(model) -> float:
        got = outputs_by_node(model)
        assert set(got) == set(convs)
        return sum(
            float(np.abs((got[n] - reference[n]).mean(axis=(0, 2, 3))).mean()) for n in convs
        )

    # act
    facts = correct_biases(corrected, cnn["fp32"], stats)
    # check
    assert facts["nodes"] == 4  # three convolutions and the Linear layer
    onnx.checker.check_model(corrected)
    assert mean_error(corrected) < 0.7 * mean_error(cnn["int8"])


def test_floating_every_node_by_graph_edit_gives_the_fp32_function(cnn):
    from mcomp.compressors.quantize.float_nodes import quantized_nodes, with_nodes_in_float
    from mcomp.compressors.quantize.prepare import keep_outputs_float

    int8 = onnx.ModelProto()
    int8.CopyFrom(cnn["int8"])
    keep_outputs_float(int8)  # as the stage does: the logits are not rounded
    # onnxruntime folded the Relu and Clip nodes into the int8 ranges
    assert not {"Relu", "Clip"} & {n.op_type for n in int8.graph.node}
    floated = with_nodes_in_float(int8, cnn["fp32"], set(quantized_nodes(int8)))
    onnx.checker.check_model(floated)
    assert {"Relu", "Clip"} <= {n.op_type for n in floated.graph.node}  # restored
    np.testing.assert_allclose(
        _run(floated, cnn["eval"]), _run(cnn["fp32"], cnn["eval"]), rtol=1e-4, atol=1e-5
    )
    assert np.abs(_run(int8, cnn["eval"]) - _run(cnn["fp32"], cnn["eval"])).max() > 1e-3


def test_floating_a_node_that_bias_correction_gave_a_bias_drops_that_bias(tmp_path):
    """A Conv exported without a bias (the PP-OCR detector's first one) gets one from bias
    correction; in float it is the fp32 node again, with no bias input to look up."""
    import torch

    from mcomp.compressors.quantize.bias_correction import correct_biases
    from mcomp.compressors.quantize.float_nodes import quantized_nodes, with_nodes_in_float
    from mcomp.compressors.quantize.prepare import keep_outputs_float
    from mcomp.compressors.quantize.statistics import collect_statistics
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    ).eval()
    fp32 = torch_to_onnx(ModelState.from_torch(net, [InputSpec(name="x", shape=[3, 8, 8])]))
    onnx.save(fp32, tmp_path / "fp32.onnx")
    x = np.random.default_rng(0).normal(size=(32, 3, 8, 8)).astype(np.float32)
    int8 = _ort_quantize(tmp_path, "int8.onnx", x)
    keep_outputs_float(int8)  # as the stage does
    stats = collect_statistics(fp32, {"x": x}, threads=1, histograms=False, batch_size=16)
    correct_biases(int8, fp32, stats)
    first = next(n for n in int8.graph.node if n.op_type == "Conv")
    source = next(n for n in fp32.graph.node if n.name == first.name)
    assert len(source.input) == 2 and len(first.input) == 3  # the bias correction's bias
    # act
    floated = with_nodes_in_float(int8, fp32, set(quantized_nodes(int8)))
    # check
    onnx.checker.check_model(floated)
    node = next(n for n in floated.graph.node if n.name == first.name)
    assert len(node.input) == 2
    # every node in float is the fp32 function: no correction of an int8 error is left
    np.testing.assert_allclose(_run(floated, x), _run(fp32, x), rtol=1e-4, atol=1e-5)


def test_the_ranking_puts_the_node_behind_the_outlier_channel_first(cnn):
    from mcomp.compressors.quantize.float_nodes import quantized_nodes
    from mcomp.compressors.quantize.sensitivity import rank_by_output

    int8 = cnn["int8"]
    compute = quantized_nodes(int8, compute_only=True)
    ranking = rank_by_output(
        int8, cnn["fp32"], compute, {"x": cnn["eval"]}, threads=1, classification=True
    )
    by_name = {n.name: n for n in cnn["fp32"].graph.node}
    first = by_name[ranking[0][0]]
    weight = next(i for i in cnn["fp32"].graph.initializer if i.name == first.input[1])
    assert first.op_type == "Conv" and list(weight.dims)[:2] == [16, 8]  # the 1x1 conv
    assert ranking[0][1] > 2 * ranking[-1][1]


def test_an_opset_11_model_is_upgraded_for_per_channel_qdq(cnn):
    """x (N, 3, 12, 12) ─Conv(W 4×3×3×3)─ReLU─> y   written at opset 11 (as PaddleOCR's
    converters do), where DequantizeLinear has no per-channel axis."""
    from onnx import TensorProto, helper, numpy_helper

    from mcomp.compressors.quantize.prepare import upgrade_opset

    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "W"
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 10, 10])],
        [weight],
    )
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    old.ir_version = 7
    upgraded = upgrade_opset(old)
    assert next(o.version for o in upgraded.opset_import if o.domain in ("", "ai.onnx")) == 13
    np.testing.assert_allclose(_run(upgraded, cnn["eval"]), _run(old, cnn["eval"]), atol=1e-5)
    assert upgrade_opset(cnn["fp32"]) is cnn["fp32"]  # recent models are left alone


def test_preprocessing_that_grows_the_weights_is_redone_without_graph_optimisation(tmp_path):
    """y = MatMul(x + Tile(b, 4096), W): onnxruntime's optimiser folds the Tile into a
    4096-wide constant, making the file twice as large; mcomp pre-processes again with shape
    inference only and keeps the weights as they are."""
    from onnx import TensorProto, helper, numpy_helper

    from mcomp.compressors.quantize.prepare import preprocess
    from mcomp.progress import NullProgress

    rng = np.random.default_rng(0)
    width = 65536
    graph = helper.make_graph(
        [
            helper.make_node("Tile", ["b", "repeats"], ["tiled"]),
            helper.make_node("Add", ["x", "tiled"], ["shifted"]),
            helper.make_node("MatMul", ["shifted", "W"], ["y"]),
        ],
        "grows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(rng.normal(size=(1, 16)).astype(np.float32), "b"),
            numpy_helper.from_array(np.array([1, width // 16], np.int64), "repeats"),
            numpy_helper.from_array(rng.normal(size=(width, 1)).astype(np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = tmp_path / "fp32.onnx"
    onnx.save(model, source)

    class Context:
        progress = NullProgress()

    prepared = preprocess(source, tmp_path / "prepared.onnx", Context())

    assert prepared.stat().st_size <= 1.2 * source.stat().st_size
    x = rng.normal(size=(2, width)).astype(np.float32)
    np.testing.assert_allclose(_run(onnx.load(str(prepared)), x), _run(model, x), rtol=1e-4)


def test_weights_held_in_constant_nodes_are_not_growth(tmp_path):
    """Conv → BatchNormalization with every tensor in a Constant node (as PaddleOCR's files
    hold them): folding the BN into the Conv's weights is the optimisation wanted, so it
    stays (no BatchNormalization in the pre-processed model)."""
    from onnx import TensorProto, helper, numpy_helper

    from mcomp.compressors.quantize.prepare import preprocess
    from mcomp.progress import NullProgress

    rng = np.random.default_rng(0)
    tensors = {
        "W": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, 8).astype(np.float32),
        "shift": rng.normal(size=8).astype(np.float32),
        "mean": rng.normal(size=8).astype(np.float32),
        "var": rng.uniform(0.5, 2, 8).astype(np.float32),
    }
    constants = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
        for name, value in tensors.items()
    ]
    graph = helper.make_graph(
        [
            *constants,
            helper.make_node("Conv", ["x", "W"], ["c"]),
            helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["y"]),
        ],
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 10, 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = tmp_path / "fp32.onnx"
    onnx.save(model, source)

    class Context:
        progress = NullProgress()

    prepared = onnx.load(str(preprocess(source, tmp_path / "prepared.onnx", Context())))

    assert "BatchNormalization" not in {node.op_type for node in prepared.graph.node}
    x = rng.normal(size=(2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(_run(prepared, x), _run(model, x), rtol=1e-4, atol=1e-5)


def test_a_shared_bias_is_copied_and_a_shared_weight_stays_one(tmp_path):
    """x ─Conv(W, B)─Relu─Conv(W, B)─ y: one weight and one bias read by both convolutions,
    as a TensorFlow exporter writes equal tensors. The int8 model loads (a shared bias
    quantized per node under one name did not), and holds the weight once."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.helpers import run_recipe

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, size=(8, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Conv", ["r", "W", "B"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "shared.onnx")
    x = rng.normal(size=(32, 8, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    (tmp_path / "recipe.yaml").write_text(
        "version: 1\nseed: 0\nmodel: {path: shared.onnx}\n"
        "data: {calibration: {path: data.npz, labels: null}, eval: {path: data.npz, "
        "labels: null}}\ntask: regression\n"
        "runtime: {threads: 1, latency: {enabled: false}}\n"
        "stages:\n  - quantize: {mode: static}\n"
    )

    result, _ = run_recipe(tmp_path / "recipe.yaml", tmp_path / "out")

    quantized = onnx.load(str(tmp_path / "out" / "model.onnx"))
    weights = [i for i in quantized.graph.initializer if list(i.dims) == [8, 8, 3, 3]]
    assert len(weights) == 1 and weights[0].data_type != TensorProto.FLOAT
    assert np.isfinite(_run(quantized, x[:4])).all()
    assert result.report["stages"][0]["details"]["int8_nodes"]["DequantizeLinear"] >= 2


def _ort_quantize(
    folder, name: str, calibration: np.ndarray, overrides: dict | None = None, fmt: str = "qdq"
):
    """onnxruntime's static quantization of `folder/fp32.onnx`: its own minmax calibration
    on `calibration`, or `overrides` as the ranges and one sample (as the stage calls it)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    samples = calibration if overrides is None else calibration[:1]

    class Reader:
        def __init__(self):
            self.batches = iter([{"x": samples[i : i + 16]} for i in range(0, len(samples), 16)])

        def get_next(self):
            return next(self.batches, None)

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(folder / "fp32.onnx"),
                str(folder / name),
                Reader(),
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=True,
                extra_options={"TensorQuantOverrides": overrides} if overrides else {},
            )
    finally:
        os.chdir(cwd)
    return onnx.load(str(folder / name))


def _scales(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.name.endswith(("_scale", "_zero_point"))
    }


class _HardSwishNet:
    """Conv → x·clip(x + 3, 0, 6)/6 (Add → Clip → Mul → Div, as torch exports a written-out
    hard swish) → Conv: the Clip's input range is what onnxruntime edits."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

            def forward(self, x):
                y = self.a(x)
                return self.b(y * torch.clamp(y + 3.0, 0.0, 6.0) / 6.0)

        torch.manual_seed(0)
        return Net().eval()


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
@pytest.mark.parametrize("net", ["cnn", "hardswish"])
def test_minmax_ranges_from_mcomp_statistics_give_onnxruntimes_own_minmax_model(
    cnn, net, fmt, tmp_path
):
    # the stage serves every method from its own statistics, onnxruntime calibrating one
    # sample: for minmax that must be exactly onnxruntime's full-split calibration, its own
    # edit of Clip/Relu input ranges included (overrides bypass it)
    from mcomp.compressors.quantize.ranges import activation_ranges, adjust_like_onnxruntime
    from mcomp.compressors.quantize.statistics import collect_statistics
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    folder, calibration = tmp_path, cnn["calibration"] * 8 - 4  # signed, wide inputs
    model = _build() if net == "cnn" else _HardSwishNet.build()
    fp32 = torch_to_onnx(ModelState.from_torch(model, [InputSpec(name="x", shape=[3, 12, 12])]))
    onnx.save(fp32, folder / "fp32.onnx")
    theirs = _scales(_ort_quantize(folder, "ort.onnx", calibration, fmt=fmt))
    stats = collect_statistics(fp32, {"x": calibration}, threads=1, histograms=False, batch_size=16)
    plain = activation_ranges(stats, "minmax")
    ranges = {name: [dict(entry[0])] for name, entry in plain.items()}
    adjust_like_onnxruntime(ranges, fp32, {node.name for node in fp32.graph.node})
    mine = _scales(_ort_quantize(folder, "mcomp.onnx", calibration, ranges, fmt))
    assert set(theirs) == set(mine) and len(theirs) > 8
    for name, value in theirs.items():
        np.testing.assert_allclose(mine[name], value, rtol=1e-6, err_msg=name)
    if fmt == "qoperator":  # QLinearConv + Relu/Clip as one op: the edit makes them equal
        unadjusted = _scales(_ort_quantize(folder, "plain.onnx", calibration, plain, fmt))
        assert any(not np.allclose(unadjusted[k], v) for k, v in theirs.items())


def test_percentile_ranges_from_tails_match_onnxruntimes_histogram_percentiles():
    from onnxruntime.quantization.calibrate import HistogramCollector

    from mcomp.compressors.quantize.ranges import has_tails, tail_percentiles
    from mcomp.compressors.quantize.statistics import TensorStatistics, tail_size

    rng = np.random.default_rng(1)
    # heavy-tailed, skewed, over several batches whose range keeps growing
    batches = [(rng.standard_t(3, (16, 32, 32)) + 0.5 * i).astype(np.float32) for i in range(6)]
    everything = np.concatenate([b.ravel() for b in batches])
    for percentile in (99.9, 99.99):
        entry = TensorStatistics()
        entry.tail_size = tail_size(everything.size, (100 - percentile) / 100)
        # quantize_static's percentile calibrator: symmetric, on |x| (its default)
        collector = HistogramCollector("percentile", True, 2048, 128, percentile, None)
        with contextlib.redirect_stdout(io.StringIO()):
            for batch in batches:
                entry.add(batch)
                collector.collect({"t": batch})
            ort_low, ort_high = collector.compute_percentile()["t"][:2]
        assert has_tails(entry, percentile)
        assert entry.tail_size < everything.size // 50  # a small share of the values is kept
        low, high = tail_percentiles(entry, percentile)
        # exact: the magnitude with the cut share of all values beyond it, clamped
        cut = int(everything.size * (100 - percentile) / 100)
        bound = float(np.sort(np.abs(everything))[-1 - cut])
        assert (low, high) == (max(-bound, float(everything.min())), bound)
        assert high < float(everything.max()) and low > float(everything.min())
        # and onnxruntime's histogram estimate of the same, within two of its bins
        width = float(np.abs(everything).max()) / 2048
        assert abs(low - float(ort_low)) < 2 * width and abs(high - float(ort_high)) < 2 * width


@pytest.mark.parametrize("shape", [(8, 16, 64), (8, 2, 64), (512,)])
def test_kept_tail_is_exactly_the_largest_magnitudes_over_batches(shape):
    """The tail read from the blocks with the largest extremes is the exact top k of |x|:
    with more blocks than k (conv maps), with fewer (two channels), and for 1-D tensors;
    ties, a batch of large values after small ones, a clipped batch (thousands of values at
    its bound, as after ReLU6) and a k larger than a batch included."""
    from mcomp.compressors.quantize.statistics import TensorStatistics

    rng = np.random.default_rng(7)
    batches = [rng.laplace(0, 1 + i, shape).round(1).astype(np.float32) for i in range(4)]
    batches.insert(0, np.full(shape, 0.5, np.float32))  # all equal: ties everywhere
    batches.insert(3, np.clip(rng.laplace(0, 9, shape), -6, 6).astype(np.float32))
    batches.append(np.clip(rng.laplace(0, 9, shape), 0, 6).astype(np.float32))
    everything = np.abs(np.concatenate([b.ravel() for b in batches]))
    for k in (3, 40, 300, 3000):
        entry = TensorStatistics()
        entry.tail_size = k
        for batch in batches:
            entry.add(batch)
        np.testing.assert_array_equal(np.sort(entry.tail), np.sort(everything)[-k:])


def test_tensor_statistics_equal_plain_numpy_reductions_over_batches():
    from mcomp.compressors.quantize.statistics import TensorStatistics

    rng = np.random.default_rng(2)
    batches = [rng.normal(i, 1 + i, (5, 6, 7, 9)).astype(np.float32) for i in range(3)]
    both = np.concatenate(batches)
    conv, matmul = TensorStatistics(), TensorStatistics()
    for batch in batches:
        conv.add(batch, last_axis=False)
        matmul.add(batch)
    for entry in (conv, matmul):
        assert (entry.low, entry.high) == (float(both.min()), float(both.max()))
        assert entry.samples == 15 and entry.elements == both.size
        per_sample = both.reshape(15, -1)
        assert entry.mean_low == pytest.approx(float(per_sample.min(axis=1).mean()), rel=1e-6)
        assert entry.mean_high == pytest.approx(float(per_sample.max(axis=1).mean()), rel=1e-6)
        np.testing.assert_array_equal(entry.channel_low, both.min(axis=(0, 2, 3)))
        np.testing.assert_array_equal(entry.channel_high, both.max(axis=(0, 2, 3)))
        np.testing.assert_allclose(entry.channel_mean(), both.mean(axis=(0, 2, 3)), rtol=1e-5)
    # the last-axis summaries only where asked (MatMul inputs)
    assert conv.last_absmax is None and conv.last_axis_mean() is None
    rows = both.reshape(-1, 9)
    np.testing.assert_array_equal(matmul.last_absmax, np.abs(rows).max(axis=0))
    np.testing.assert_allclose(matmul.last_axis_mean(), rows.mean(axis=0), rtol=1e-5)
    # a batch with a NaN or an inf is left out
    for bad in (np.nan, np.inf):
        poisoned = batches[0].copy()
        poisoned[1, 2, 3, 4] = bad
        conv.add(poisoned)
        assert conv.samples == 15


def test_ranges_as_onnxruntime_cache_give_the_model_its_calibration_pass_gives(cnn, tmp_path):
    """mcomp's ranges handed to onnxruntime as its calibration cache (no calibration pass)
    make the same int8 model, initializer for initializer, as the overrides with
    onnxruntime's one-batch calibration pass (how the stage called it before)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from mcomp.compressors.quantize.ort_quantize import ranges_cache
    from mcomp.compressors.quantize.ranges import activation_ranges, adjust_like_onnxruntime

    stats = _stats(cnn, histograms=False)
    ranges = activation_ranges(stats, "minmax")
    all_nodes = {node.name for node in cnn["fp32"].graph.node}
    adjust_like_onnxruntime(ranges, cnn["fp32"], all_nodes)
    calibrated = _ort_quantize(cnn["folder"], "calibrated.onnx", cnn["calibration"], ranges)
    cache = ranges_cache(ranges, tmp_path / "ranges.json")
    assert cache is not None and cache.is_file()
    cwd = os.getcwd()
    os.chdir(cnn["folder"])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(cnn["folder"] / "fp32.onnx"),
                str(tmp_path / "cached.onnx"),
                None,  # no data: the cache is all onnxruntime gets
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=True,
                calibration_cache_path=str(cache),
                extra_options={"TensorQuantOverrides": ranges},
            )
    finally:
        os.chdir(cwd)
    cached = onnx.load(str(tmp_path / "cached.onnx"))
    assert [n.op_type for n in cached.graph.node] == [n.op_type for n in calibrated.graph.node]
    ours = {i.name: onnx.numpy_helper.to_array(i) for i in cached.graph.initializer}
    theirs = {i.name: onnx.numpy_helper.to_array(i) for i in calibrated.graph.initializer}
    assert ours.keys() == theirs.keys() and any(k.endswith("_scale") for k in ours)
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name])
    np.testing.assert_array_equal(_run(cached, cnn["eval"]), _run(calibrated, cnn["eval"]))


def test_statistics_pass_keeps_the_fp32_outputs_of_the_first_samples(cnn):
    """The reference that auto calibration scores against comes from the statistics pass:
    the fp32 model's outputs on the first samples, batch by batch, as a plain run gives."""
    from mcomp.compressors.quantize.statistics import collect_statistics

    kept: dict = {}
    collect_statistics(
        cnn["fp32"],
        {"x": cnn["calibration"]},
        threads=1,
        histograms=True,  # two passes: the outputs are kept from the first only
        batch_size=16,
        outputs=kept,
        output_samples=20,  # across a batch boundary (16)
    )
    (name,) = [o.name for o in cnn["fp32"].graph.output]
    got = np.concatenate(kept[name])
    assert got.shape[0] == 20
    np.testing.assert_allclose(
        got, _run(cnn["fp32"], cnn["calibration"][:20]), rtol=1e-5, atol=1e-6
    )


def test_uniform_histogram_counts_as_numpy_does_but_for_values_on_a_bin_edge():
    from mcomp.compressors.quantize.statistics import HISTOGRAM_BINS, uniform_histogram

    rng = np.random.default_rng(3)
    # several chunks long, a heavy tail, the extremes themselves included
    values = rng.standard_t(3, size=(3, 70_001)).astype(np.float32)
    low, high = float(values.min()), float(values.max())
    got = uniform_histogram(values, low, high)
    expected, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    assert got.sum() == values.size  # nothing dropped, the max in the last bin
    assert got[0] >= 1 and got[-1] >= 1
    # only values within float32 rounding of an edge may land one bin over
    assert np.abs(got - expected).sum() <= 2e-4 * values.size
    # bin centres are far from every edge: exactly numpy's counts
    width = (high - low) / HISTOGRAM_BINS
    centres = (low + width * (np.arange(HISTOGRAM_BINS) + 0.5)).astype(np.float32)
    picks = np.repeat(centres, rng.integers(0, 4, HISTOGRAM_BINS))
    expected_centres, _ = np.histogram(picks, bins=HISTOGRAM_BINS, range=(low, high))
    np.testing.assert_array_equal(uniform_histogram(picks, low, high), expected_centres)


def test_histograms_asked_after_a_first_pass_add_only_the_histogram_pass(cnn):
    """The fallback's entropy trial needs histograms the first quantization did not: the
    statistics already collected are kept, and the histograms equal a two-pass run's."""
    from mcomp.compressors.quantize.statistics import collect_statistics

    first = _stats(cnn, histograms=False)
    before = {name: (s.low, s.high, s.samples, s.elements) for name, s in first.items()}
    assert all(s.histogram is None for s in first.values())
    kept: dict = {}
    both = collect_statistics(
        cnn["fp32"],
        {"x": cnn["calibration"]},
        threads=1,
        histograms=True,
        batch_size=16,
        outputs=kept,
        output_samples=8,
        existing=first,
    )
    assert kept == {}  # no first pass ran again
    assert {name: (s.low, s.high, s.samples, s.elements) for name, s in both.items()} == before
    two_pass = _stats(cnn, histograms=True)
    assert set(both) == set(two_pass)
    for name, entry in both.items():
        np.testing.assert_array_equal(entry.histogram, two_pass[name].histogram)
