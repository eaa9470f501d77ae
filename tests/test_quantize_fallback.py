"""The quantize stage's accuracy-aware fallback on a model that plain int8 breaks.

The model is a trained 4-class MLP in which two hidden units of the first layer were scaled
by 1000 (and their outgoing weights by 1/1000): the float function is unchanged, but the
per-tensor uint8 range of that activation is now ~1000x too wide, so int8 loses every other
unit. Per-channel weights and percentile calibration cannot fix an activation outlier that is
present in every sample (percentile clips only the rarest values). Two things do: entropy
calibration, which clips the range to where the bulk of the values lie (the two outlier units
saturate, the other 30 keep their resolution), and leaving the layers around it in float.

    x(16) → Gemm(16→32, outlier rows) → Relu → Gemm(32→32) → Relu → Gemm(32→4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mcomp.compressors.quantize.fallback import TIMING_BATCH
from tests.helpers import run_recipe

RECIPE = """\
version: 1
seed: 0
model: {path: mlp.onnx}
data: {train: train.npz, eval: eval.npz, batch_size: 64, calibration_samples: 128}
runtime: {threads: 1, latency: {runs: 3, warmup: 1, batch: 8}}
stages:
  - quantize: %s
"""


def build_outlier_mlp(folder: Path) -> None:
    import torch
    from torch import nn

    from tests.test_quantize import export

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.5, size=(4, 16)).astype(np.float32)
    splits = {}
    for name, count in (("train", 512), ("eval", 256)):
        y = rng.integers(0, 4, size=count)
        x = (centers[y] + rng.normal(0, 1.0, size=(count, 16))).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x, y=y)
        splits[name] = (torch.from_numpy(x), torch.from_numpy(y))
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(splits["train"][0]), splits["train"][1]).backward()
        optimizer.step()
    with torch.no_grad():
        for unit in (0, 1):
            model[0].weight[unit] *= 1000
            model[0].bias[unit] *= 1000
            model[2].weight[:, unit] /= 1000
    export(model.eval(), [16], folder / "mlp.onnx")


@pytest.fixture(scope="module")
def outlier_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outlier")
    build_outlier_mlp(folder)
    return folder


def quantize(folder: Path, options: str, extra: str = ""):
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE % options + extra)
    result, progress = run_recipe(recipe, folder / "out")
    return result, onnx.load(str(folder / "out" / "model.onnx")), progress.warnings


def check_valid(model: onnx.ModelProto, folder: Path) -> None:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.load(folder / "eval.npz")["x"][:8]})
    assert out.shape == (8, 4) and np.isfinite(out).all()


def test_cheap_alternatives_come_first_and_entropy_calibration_fixes_the_outlier(outlier_dir):
    result, model, _ = quantize(outlier_dir, "{max_accuracy_drop: 0.02}")
    fallback = result.report["stages"][0]["details"]["fallback"]
    trials = fallback["trials"]
    # auto calibration's plain trial used the one of its two candidates closer to fp32 (which
    # one depends on the CPU's weight type); the other candidate is the first alternative
    first = trials[0]["calibration"]
    assert first in ("minmax", "percentile")
    other = "percentile" if first == "minmax" else "minmax"
    labels = ["plain", f"calibration {other}", "calibration mse", "calibration entropy"]
    assert [t["label"] for t in trials] == labels
    # neither candidate can, nor mse: clipping the outlier units costs it more squared error
    assert all(t["drop"] > 0.2 for t in trials[:3])
    # auto had quantized the other candidate already: only scored, not quantized again
    assert [t["reused"] for t in trials] == [False, True, False, False]
    assert fallback["met"] is True and trials[-1]["drop"] <= 0.02
    assert fallback["float_nodes"] == [] and fallback["chosen"] == "calibration entropy"
    assert result.report["stages"][0]["details"]["calibration"]["method"] == "entropy"
    assert result.ok
    check_valid(model, outlier_dir)


def test_fallback_leaves_sensitive_nodes_in_float_until_the_budget_holds(outlier_dir):
    # act: no cheap alternatives, so the search goes straight to float nodes
    result, model, _ = quantize(
        outlier_dir, "{max_accuracy_drop: 0.02, fallback: {alternatives: false}}"
    )
    # check: plain int8 broke the budget, leaving a node or two in float met it
    details = result.report["stages"][0]["details"]
    fallback = details["fallback"]
    trials = fallback["trials"]
    assert trials[0]["label"] == "plain" and trials[0]["drop"] > 0.2
    assert {t["calibration"] for t in trials} == {trials[0]["calibration"]}
    assert fallback["met"] is True and trials[-1]["drop"] <= 0.02
    assert 1 <= len(fallback["float_nodes"]) < 3
    assert details["excluded_nodes"] == fallback["float_nodes"]
    floated = {n.name: n.op_type for n in model.graph.node if n.name in fallback["float_nodes"]}
    assert set(floated.values()) == {"Gemm"}
    weights = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.name in fallback["float_nodes"]:
            assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT
    assert details["int8_nodes"]["QuantizeLinear"] >= 1
    cost = fallback["latency_cost"]
    assert cost["batch"] == TIMING_BATCH and cost["all_int8_ms"] > 0 and cost["chosen_ms"] > 0
    # candidates scored on the first eval samples, the chosen one confirmed on all of them
    assert {t["scored_on"] for t in trials[1:-1]} <= {"subset"}
    assert trials[-1]["scored_on"] == "eval" and trials[-1]["float_nodes"] == len(floated)
    ranked = [row["node"] for row in fallback["sensitivity"]]
    assert set(ranked[: len(floated)]) == set(floated)  # the float nodes lead the ranking
    assert all("local_error" in row for row in fallback["sensitivity"])
    assert result.ok
    check_valid(model, outlier_dir)


def test_the_search_stops_at_max_seconds_and_keeps_the_best_model(outlier_dir):
    # a time budget smaller than one trial: the ranking is cut short, no trial is started
    # after the time is spent, yet the plain int8 model is kept and written
    result, model, warnings = quantize(
        outlier_dir,
        "{max_accuracy_drop: 0.0, fallback: {alternatives: false, max_seconds: 0.001}}",
    )
    fallback = result.report["stages"][0]["details"]["fallback"]
    assert fallback["met"] is False and [t["label"] for t in fallback["trials"]] == ["plain"]
    assert any("not met within 1 trial(s)" in w for w in warnings)
    check_valid(model, outlier_dir)


def test_the_recipe_constraint_is_the_default_budget(outlier_dir):
    result, model, _ = quantize(outlier_dir, "{}", "constraints: {max_accuracy_drop: 0.02}\n")
    fallback = result.report["stages"][0]["details"]["fallback"]
    assert fallback["budget_from"] == "constraints.max_accuracy_drop" and fallback["met"]
    assert result.ok and all(c["ok"] for c in result.report["constraints"])
    check_valid(model, outlier_dir)


def test_budget_not_met_within_trials_keeps_the_best_model_and_the_run_fails(outlier_dir):
    # one trial only: percentile calibration, which cannot fix the outlier
    result, model, warnings = quantize(
        outlier_dir, "{fallback: {max_trials: 1}}", "constraints: {max_accuracy_drop: 0.02}\n"
    )
    fallback = result.report["stages"][0]["details"]["fallback"]
    assert fallback["met"] is False and len(fallback["trials"]) == 2
    assert any("not met within 2 trial(s)" in w for w in warnings)
    assert not result.ok and not result.report["constraints"][0]["ok"]
    check_valid(model, outlier_dir)  # the best model is written all the same


def test_no_budget_means_no_search(outlier_dir):
    result, _, _ = quantize(outlier_dir, "{}")
    assert "fallback" not in result.report["stages"][0]["details"]


def test_fallback_options_are_checked():
    from pydantic import ValidationError

    from mcomp.compressors.quantize.options import QuantizeOptions

    with pytest.raises(ValidationError, match="max_trials"):
        QuantizeOptions(fallback={"max_trials": 0})
    with pytest.raises(ValidationError, match="max_trails"):
        QuantizeOptions(fallback={"max_trails": 3})


def test_fallback_in_dynamic_mode_leaves_the_outlier_matmuls_in_float(outlier_dir):
    # dynamic int8 quantizes each batch's activations with the batch's own range: the outlier
    # units widen it just as much, so plain dynamic int8 breaks the budget as well (SmoothQuant
    # off: with its default `auto`, dynamic int8 of this model meets the budget unaided)
    result, model, _ = quantize(
        outlier_dir, "{mode: dynamic, max_accuracy_drop: 0.02, smoothquant: false}"
    )
    details = result.report["stages"][0]["details"]
    fallback = details["fallback"]
    assert details["mode"] == "dynamic"
    assert fallback["trials"][0]["drop"] > 0.2
    assert fallback["met"] is True and fallback["trials"][-1]["drop"] <= 0.02
    # one Linear left in float: the one reading the outlier activation (its Gemm and the
    # MatMul it was rewritten to carry the same name stem)
    assert {name.removesuffix("_matmul") for name in fallback["float_nodes"]} == {"node_linear_1"}
    ops = {node.name: node.op_type for node in model.graph.node}
    assert all(ops[name] in ("MatMul", "Gemm") for name in fallback["float_nodes"] if name in ops)
    assert sum(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops.values()) >= 1
    assert result.ok
    check_valid(model, outlier_dir)


def test_budget_broken_before_quantize_is_said_and_the_plain_int8_model_kept(tmp_path):
    # 97 % of the digits CNN's weights pruned, no finetune: the fp32 model quantize receives
    # already breaks the 1-point budget, so no set of float nodes can meet it
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""\
version: 1
seed: 0
model: {builtin: digits_cnn}
data: {train: digits, eval: digits, calibration_samples: 64}
runtime: {threads: 1, latency: {runs: 3, warmup: 1, batch: 8}}
stages:
  - prune: {sparsity: 0.97, scope: global}
  - quantize: {}
constraints: {max_accuracy_drop: 0.01}
""")
    result, progress = run_recipe(recipe, tmp_path / "out")
    details = result.report["stages"][1]["details"]["fallback"]
    assert details["needed"] is True and details["met"] is False
    assert details["fp32_input_metric"] < details["reference_metric"] - 0.01
    assert "even with every node in float" in details["message"]
    assert any("even with every node in float" in w for w in progress.warnings)
    assert len(details["trials"]) == 1, "no search when float itself breaks the budget"
    assert not result.ok and not result.report["constraints"][0]["ok"]
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))  # the plain int8 model, written
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
