"""The four core stages on a tiny real MLP: real torch training, real onnxruntime sessions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mcomp.errors import ParityError, StageError
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project


@pytest.fixture
def project(tmp_path):
    write_mlp_project(tmp_path)
    return tmp_path


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_reaches_the_target_sparsity_and_finetune_keeps_it(project, scope):
    # setup
    recipe = mlp_recipe(
        project,
        f"  - prune: {{sparsity: 0.8, scope: {scope}}}\n  - finetune: {{epochs: 2, lr: 0.01}}\n",
    )
    # act
    result, _ = run_recipe(recipe, project / "out")
    # check
    prune, finetune = result.report["stages"]
    weights = sum(prune["details"]["layers"].values())
    assert prune["details"]["pruned_weights"] == pytest.approx(
        0.8 * (16 * 32 + 32 * 32 + 32 * 4), abs=2
    )
    if scope == "layer":
        assert all(v == pytest.approx(0.8, abs=0.01) for v in prune["details"]["layers"].values())
    assert weights > 0
    assert finetune["metrics"]["nonzero_params"] == prune["metrics"]["nonzero_params"]
    assert finetune["metrics"]["sparsity"] == prune["metrics"]["sparsity"]
    assert len(finetune["details"]["train_loss"]) == 2
    # the written model carries the zeros: the compressed file shrinks
    base = result.report["baseline"]["metrics"]
    assert prune["metrics"]["size_compressed_bytes"] < base["size_compressed_bytes"] * 0.6


def test_prune_include_exclude_and_unmatched_pattern_warning(project):
    recipe = mlp_recipe(
        project, "  - prune: {sparsity: 0.5, include: ['*'], exclude: ['4', 'nope*']}\n"
    )
    result, progress = run_recipe(recipe, project / "out")
    layers = result.report["stages"][0]["details"]["layers"]
    assert set(layers) == {"0", "2"}
    assert any("'nope*'" in w for w in progress.warnings)


def test_prune_excluding_every_layer_fails_before_any_work(project):
    recipe = mlp_recipe(project, "  - finetune: {epochs: 1}\n  - prune: {exclude: ['*']}\n")
    from mcomp.progress import NullProgress
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    progress = NullProgress()
    with pytest.raises(StageError, match="no layer left to prune"):
        run_pipeline(load_recipe(str(recipe)), RunOptions(out_dir=project / "out"), progress)
    # the failure comes from the up-front check, before finetune trained anything
    assert progress.messages and not any("finetune" in m for m in progress.messages)
    assert not (project / "out").exists()


def test_static_quantize_writes_int8_qdq_model_that_runs(project):
    recipe = mlp_recipe(
        project, "  - quantize: {mode: static, weight_type: int8}\n  - export: {}\n"
    )
    result, _ = run_recipe(recipe, project / "out")
    model_path = project / "out" / "model.onnx"
    counts = op_counts(model_path)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    int8 = [
        i
        for i in onnx.load(str(model_path)).graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]
    assert int8, "weights are stored as int8"
    quant = result.report["stages"][0]
    assert "converted torch → ONNX" in quant["notes"][0]
    base = result.report["baseline"]["metrics"]
    # on a 1.7k-parameter MLP per-channel scales weigh a lot; the 4x figure is checked on the
    # quickstart CNN (test_quickstart.py)
    assert quant["metrics"]["size_bytes"] < base["size_bytes"]
    assert quant["metrics"]["metric"] >= base["metric"] - 0.05
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.load(project / "eval.npz")["x"][:5]
    assert session.run(None, {"x": x})[0].shape == (5, 4)


def test_dynamic_quantize_rewrites_linear_layers_to_int8_matmul(project):
    recipe = mlp_recipe(project, "  - quantize: {mode: dynamic}\n")
    result, _ = run_recipe(recipe, project / "out")
    counts = op_counts(project / "out" / "model.onnx")
    assert counts["MatMulInteger"] + counts["DynamicQuantizeMatMul"] >= 3
    assert counts["Gemm"] == 0
    assert result.report["stages"][0]["metrics"]["fidelity"]["top1_agreement"] > 0.9


def test_export_parity_and_tolerance_error(project):
    recipe = mlp_recipe(project, "  - export: {opset: 17}\n")
    result, _ = run_recipe(recipe, project / "out")
    details = result.report["stages"][0]["details"]
    assert details["opset"] == 17 and details["parity_max_abs_diff"] < 1e-4
    model = onnx.load(str(project / "out" / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_parity_error_names_the_output_and_difference(project, monkeypatch):
    import torch

    from mcomp.model.convert import check_parity, torch_to_onnx
    from mcomp.model.load import load_model
    from mcomp.recipe.schema import InputSpec, ModelSpec

    monkeypatch.syspath_prepend(str(project))
    state = load_model(ModelSpec(path="mlp.pt", factory="tinymodels:mlp"), base_dir=project)
    state.inputs = [InputSpec(name="x", shape=[16])]
    exported = torch_to_onnx(state)
    with torch.no_grad():  # make torch and the exported graph disagree
        next(state.module.parameters()).add_(0.5)
    x = {"x": np.load(project / "eval.npz")["x"][:8]}
    with pytest.raises(ParityError, match=r"output 0 differs from torch by up to"):
        check_parity(state, exported, x, threads=1, atol=1e-4, rtol=1e-3)


def _torch_macs(state) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from mcomp.model.convert import example_inputs

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        state.module(*example_inputs(state, batch=1))
    return counter.get_total_flops() // 2


def test_onnx_macs_match_torch_flop_counter():
    from mcomp.measure.onnx_macs import count_onnx_macs
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.models.digits_cnn import digits_cnn
    from mcomp.recipe.schema import InputSpec

    state = ModelState.from_torch(digits_cnn().eval(), [InputSpec(name="x", shape=[1, 8, 8])])
    torch_macs = _torch_macs(state)
    assert torch_macs == 8 * 8 * 16 * 9 + 8 * 8 * 32 * 16 * 9 + 512 * 64 + 64 * 10
    exported = torch_to_onnx(state)
    assert count_onnx_macs(exported) == torch_macs
    # no exporter debug text: per-node stack traces nor the torch program's signature
    assert not any(entry.key.startswith("pkg.torch.") for entry in exported.graph.metadata_props)
    assert not any(node.metadata_props for node in exported.graph.node)


def test_wrapper_prefixes_are_stripped_before_matching(tmp_path, monkeypatch):
    from pathlib import Path

    import torch

    tests = Path(__file__).resolve().parent
    monkeypatch.syspath_prepend(str(tests))
    from prunable_models import wrapped_mlp

    write_mlp_project(tmp_path)
    torch.save(wrapped_mlp().state_dict(), tmp_path / "wrapped.pt")
    (tmp_path / "recipe.yaml").write_text(
        f"model: {{path: wrapped.pt, factory: 'prunable_models:wrapped_mlp', "
        f"python_path: ['{tests}']}}\n"
        "data: {train: train.npz, eval: eval.npz}\n"
        "runtime: {threads: 1, latency: {enabled: false}}\n"
        "stages: [{prune: {sparsity: 0.5, exclude: ['2']}}]\n"
    )
    result, progress = run_recipe(tmp_path / "recipe.yaml", tmp_path / "out")
    assert set(result.report["stages"][0]["details"]["layers"]) == {"0"}
    assert not progress.warnings  # 'module.2' matched the pattern '2'


@pytest.mark.parametrize("mode", ["static", "dynamic", "auto"])
def test_prune_then_int8_keeps_the_zeros(project, mode):
    # setup: 70 % of the MLP's weights pruned, then int8 with every type left at auto
    recipe = mlp_recipe(project, f"  - prune: {{sparsity: 0.7}}\n  - quantize: {{mode: {mode}}}\n")
    # act
    result, _ = run_recipe(recipe, project / "out")
    # check: the int8 file holds the pruned zeros as the byte 0 (signed symmetric weights),
    # and the report's sparsity after quantize is the pruned one
    prune, quantize = result.report["stages"]
    assert quantize["details"]["symmetric_weights"] is True
    assert quantize["details"]["weight_type"] == "int8"
    assert quantize["metrics"]["sparsity"] >= prune["metrics"]["sparsity"] - 0.01
    model = onnx.load(str(project / "out" / "model.onnx"))
    int8 = [
        onnx.numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2
    ]
    assert int8 and sum(int((w == 0).sum()) for w in int8) >= 0.69 * sum(w.size for w in int8)


def test_finetune_that_only_hurts_keeps_the_model_as_it_came_in(project):
    # setup: labels shuffled against the inputs, so training on them can only lose accuracy
    train = dict(np.load(project / "train.npz"))
    train["y"] = np.random.default_rng(1).permutation(train["y"])
    np.savez(project / "train.npz", **train)
    recipe = mlp_recipe(project, "  - finetune: {epochs: 2, lr: 0.05}\n")
    # act
    result, progress = run_recipe(recipe, project / "out")
    # check: both epochs scored below the start, so the start is kept, weights and metric
    (finetune,) = result.report["stages"]
    details = finetune["details"]
    start = details["start_eval_metric"]
    assert start == pytest.approx(result.report["baseline"]["metrics"]["metric"])
    assert max(details["eval_metric"]) < start and details["best_epoch"] == 0
    assert finetune["metrics"]["metric"] == pytest.approx(start)
    assert any(
        "every epoch scored worse than the model as it came in" in line
        for line in progress.messages
    )


def test_a_finetune_that_ties_the_start_keeps_its_trained_epoch(project):
    # a learning rate too small to move any prediction: every epoch ties the start
    recipe = mlp_recipe(project, "  - finetune: {epochs: 2, lr: 1.0e-9}\n")
    result, _ = run_recipe(recipe, project / "out")
    (finetune,) = result.report["stages"]
    details = finetune["details"]
    assert details["eval_metric"] == [details["start_eval_metric"]] * 2
    assert details["best_epoch"] == 1  # the tie goes to training, the first tying epoch kept
