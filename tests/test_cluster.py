"""Weight sharing (`cluster` stage): k-means per layer, zeros kept, int8 after clustering."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from mcomp.compressors.cluster import cluster_weights, shared_weight
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
    recipe = mlp_recipe(project, "  - prune: {sparsity: 0.5}\n"
                                 "  - cluster: {clusters: 6, finetune_epochs: 2, lr: 0.001}\n"
                                 "  - export: {}\n", extra=NO_LATENCY)
    # act
    result, _ = run_recipe(recipe, project / "out")
    # check: the written ONNX weights themselves
    prune, cluster, _ = result.report["stages"]
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(project / "out" / "model.onnx"))
               .graph.initializer if i.dims and len(i.dims) == 2]
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
    recipe.write_text("version: 1\nmodel: {builtin: digits_cnn}\n"
                      "data: {train: {builtin: digits, samples: 300}, "
                      "eval: {builtin: digits, samples: 200}, calibration_samples: 64}\n"
                      + NO_LATENCY + "stages:\n  - cluster: {clusters: 16, init: kmeans++}\n"
                      "  - quantize: {mode: static}\n  - export: {}\n")
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
    assert quantize["metrics"]["metric"] >= base["metric"] - 0.03
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (3, 10)


@pytest.mark.parametrize("value", [1, 257])
def test_cluster_count_outside_2_to_256_is_a_recipe_error(project, value):
    recipe = mlp_recipe(project, f"  - cluster: {{clusters: {value}}}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.cluster\.clusters"):
        run_recipe(recipe, project / "out")
