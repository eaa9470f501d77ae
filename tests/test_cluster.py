"""Weight sharing (`cluster` stage): k-means per layer, zeros kept, int8 after clustering."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from mcomp.compressors.cluster.stage import cluster_weights, shared_weight
from mcomp.errors import RecipeError
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project

NO_LATENCY = "runtime: {threads: 1, latency: {enabled: false}}\n"


@pytest.fixture
def project(tmp_path):
    write_mlp_project(tmp_path)
    return tmp_path


@pytest.mark.parametrize("init", ["linear", "kmeans++"])
def test_kmeans_keeps_at_most_k_values_zeros_exact_and_is_deterministic(init):
    # setup: a weight with 30 % exact zeros
    torch.manual_seed(0)
    weight = torch.randn(64, 50)
    weight[torch.rand(64, 50) < 0.3] = 0.0
    # act
    first = cluster_weights(weight, 8, init=init, iterations=50, seed=3)
    again = cluster_weights(weight, 8, init=init, iterations=50, seed=3)
    shared = shared_weight(*first)
    # check
    assert torch.unique(shared).numel() <= 8
    assert torch.equal(shared == 0, weight == 0)  # zeros are a cluster of their own
    assert torch.equal(shared, shared_weight(*again))
    # every non-zero weight went to its nearest centroid, and Lloyd beat its starting grid
    centroids, kept = first[0], weight[weight != 0]
    nearest = (kept[:, None] - centroids[None, :]).abs().min(dim=1).values
    assert torch.allclose((shared[weight != 0] - kept).abs(), nearest)
    one_pass = shared_weight(*cluster_weights(weight, 8, init=init, iterations=1, seed=3))
    assert float(((shared - weight) ** 2).sum()) <= float(((one_pass - weight) ** 2).sum())


def test_cluster_then_export_leaves_k_values_per_layer_and_keeps_zeros(project):
    # setup
    recipe = mlp_recipe(
        project,
        "  - prune: {sparsity: 0.5}\n"
        "  - cluster: {clusters: 6, finetune_epochs: 2, lr: 0.001}\n"
        "  - export: {}\n",
        extra=NO_LATENCY,
    )
    # act
    result, _ = run_recipe(recipe, project / "out")
    # check: the written ONNX weights themselves
    prune, cluster, _ = result.report["stages"]
    weights = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(project / "out" / "model.onnx")).graph.initializer
        if i.dims and len(i.dims) == 2
    ]
    assert len(weights) == 3
    assert all(np.unique(w).size <= 6 for w in weights)
    assert cluster["metrics"]["nonzero_params"] == prune["metrics"]["nonzero_params"]
    layers = cluster["details"]["layers"]
    assert all(f["clusters"] <= 6 and f["index_bits"] == 3 for f in layers.values())
    assert cluster["details"]["index_coded_bytes"] < cluster["details"]["fp32_bytes"] / 5
    assert len(cluster["details"]["finetune"]["train_loss"]) == 2
    assert cluster["metrics"]["metric"] >= prune["metrics"]["metric"] - 0.05


def test_cluster_then_int8_quantize_runs_in_onnxruntime(tmp_path):
    # setup: the digits CNN, clustered to 16 values, then static int8
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "version: 1\nmodel: {builtin: digits_cnn}\n"
        "data: {train: {builtin: digits, samples: 300}, "
        "eval: {builtin: digits, samples: 200}, calibration_samples: 64}\n"
        + NO_LATENCY
        + "stages:\n  - cluster: {clusters: 16, init: kmeans++}\n"
        # int8 weights named (auto is uint8 without VNNI): uint8 tensors are cluster indices
        "  - quantize: {mode: static, weight_type: int8}\n  - export: {}\n"
    )
    # act
    result, _ = run_recipe(recipe, tmp_path / "out")
    # check
    base = result.report["baseline"]["metrics"]
    cluster, quantize, _ = result.report["stages"]
    assert cluster["metrics"]["size_compressed_bytes"] < base["size_compressed_bytes"] / 3
    assert cluster["metrics"]["metric"] >= base["metric"] - 0.03
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    counts = Counter(node.op_type for node in model.graph.node)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    # the index-coded weights (the default storage) were folded back and quantized
    assert cluster["details"]["storage"]["tensors"]
    assert counts["Gather"] == 0
    assert not any(
        i.data_type == onnx.TensorProto.UINT8 and len(i.dims) > 1 for i in model.graph.initializer
    )
    assert quantize["metrics"]["metric"] >= base["metric"] - 0.03
    session = ort.InferenceSession(
        str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (3, 10)


@pytest.mark.parametrize("value", [1, 257])
def test_cluster_count_outside_2_to_256_is_a_recipe_error(project, value):
    recipe = mlp_recipe(project, f"  - cluster: {{clusters: {value}}}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.cluster\.clusters"):
        run_recipe(recipe, project / "out")


def test_index_code_is_lossless_keeps_zeros_and_skips_many_valued_tensors():
    # setup:  x --MatMul(W: 8x16, 4 values + zeros)--> h --MatMul(V: 16x300 random)--> y
    import onnx.helper as oh

    from mcomp.compressors.cluster.storage import index_code

    rng = np.random.default_rng(0)
    w = rng.choice(np.array([0.0, -0.5, 0.25, 1.5, 2.0], np.float32), size=(8, 16))
    v = rng.standard_normal((16, 300)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W"], ["h"]), oh.make_node("MatMul", ["h", "V"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 300])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    # act
    coded, facts = index_code(model)
    # check: W became uint8 indices + a codebook starting at 0; V (300+ values) stayed float
    onnx.checker.check_model(coded)
    inits = {i.name: numpy_helper.to_array(i) for i in coded.graph.initializer}
    assert facts == {"W": {"values": 5, "elements": 128}}
    assert set(inits) == {"W.index", "W.codebook", "V"}
    assert inits["W.index"].dtype == np.uint8 and inits["W.codebook"][0] == 0
    assert np.array_equal(inits["W.codebook"][inits["W.index"]], w)
    assert np.count_nonzero(inits["W.index"]) == np.count_nonzero(w)
    assert [n.op_type for n in coded.graph.node] == ["Cast", "Gather", "MatMul", "MatMul"]
    x = rng.standard_normal((5, 8)).astype(np.float32)
    outputs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for m in (model, coded)
    ]
    assert np.array_equal(outputs[0], outputs[1])


def test_index_coded_storage_is_smaller_and_computes_the_float_models_outputs(tmp_path):
    # setup: the same clustering written with both storages, then `export`, which must keep
    # the cluster stage's ONNX form
    reports = {}
    for storage in ("indices", "float"):
        recipe = tmp_path / f"{storage}.yaml"
        recipe.write_text(
            "version: 1\nmodel: {builtin: digits_cnn}\n"
            "data: {train: {builtin: digits, samples: 200}, "
            "eval: {builtin: digits, samples: 120}}\n"
            + NO_LATENCY
            + f"stages:\n  - prune: {{sparsity: 0.5}}\n"
            f"  - cluster: {{clusters: 16, storage: {storage}}}\n"
            "  - export: {}\n"
        )
        # act
        reports[storage] = run_recipe(recipe, tmp_path / storage)[0].report
    # check: uint8 index tensors and Gathers in the file, none in the float one
    files = {s: onnx.load(str(tmp_path / s / "model.onnx")) for s in reports}
    coded_ops = Counter(n.op_type for n in files["indices"].graph.node)
    assert coded_ops["Gather"] == 4 and coded_ops["Cast"] == 4
    assert "Gather" not in Counter(n.op_type for n in files["float"].graph.node)
    coded_inits = files["indices"].graph.initializer
    assert sum(i.data_type == onnx.TensorProto.UINT8 for i in coded_inits) == 4
    indices, floats = (reports[s]["stages"][1] for s in ("indices", "float"))
    assert indices["details"]["storage"]["max_abs_diff_vs_float"] == 0.0
    # the same model: metric, parameters and non-zeros agree; the index-coded file is smaller
    for key in ("metric", "params", "nonzero_params", "macs"):
        assert indices["metrics"][key] == floats["metrics"][key], key
    assert indices["metrics"]["size_bytes"] < floats["metrics"]["size_bytes"] / 3
    assert indices["metrics"]["size_compressed_bytes"] < floats["metrics"]["size_compressed_bytes"]
    x = np.random.default_rng(1).standard_normal((7, 1, 8, 8)).astype(np.float32)
    outputs = [
        ort.InferenceSession(files[s].SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {files[s].graph.input[0].name: x}
        )[0]
        for s in files
    ]
    assert np.array_equal(outputs[0], outputs[1])
