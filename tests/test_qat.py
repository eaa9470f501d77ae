"""Quantization-aware training on the bundled digits CNN: fake-quant hooks, learned ranges
handed to onnxruntime, and QAT accuracy against post-training quantization."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers import run_recipe

RECIPE = """\
version: 1
seed: 0
model: {builtin: digits_cnn}
data: {train: digits, eval: digits, calibration_samples: 128}
runtime: {threads: 1, latency: {enabled: false}}
stages:
%s
"""


def run(folder: Path, stages: str):
    folder.mkdir(exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE % stages)
    result, _ = run_recipe(recipe, folder / "out")
    return result.report, onnx.load(str(folder / "out" / "model.onnx"))


def check_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 1, 8, 8), np.float32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    assert out.shape == (2, 10) and np.isfinite(out).all()


def scale_of(model: onnx.ModelProto, tensor: str) -> float:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(
        n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor
    )
    return float(inits[node.input[1]])


def test_qat_is_at_least_as_accurate_as_ptq_and_uses_the_learned_ranges(tmp_path):
    # act: PTQ and QAT with the same quantization settings (static QDQ, U8S8, symmetric
    # per-channel weights)
    ptq, _ = run(tmp_path / "ptq", "  - quantize: {symmetric_weights: true}")
    qat, model = run(tmp_path / "qat", "  - qat: {epochs: 2}")
    # check
    ptq_metric = ptq["stages"][0]["metrics"]["metric"]
    qat_metric = qat["stages"][0]["metrics"]["metric"]
    assert qat_metric >= ptq_metric, (qat_metric, ptq_metric)
    details = qat["stages"][0]["details"]
    assert details["fake_quantized_modules"] == 4 and len(details["eval_metric_fake_quant"]) == 2
    mapping = details["qat"]
    assert mapping["unmapped"] == [] and len(mapping["mapped"]) == 4
    for tensor, (low, high) in mapping["ranges"].items():
        assert scale_of(model, tensor) == pytest.approx((high - low) / 255, rel=1e-3)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 4 and ops["Conv"] == 2
    assert not any("FakeQuant" in op for op in ops)
    check_valid(model)


def test_finetune_qat_hands_ranges_to_a_later_quantize_stage(tmp_path):
    report, model = run(tmp_path, "  - finetune: {epochs: 1, qat: true}\n  - quantize: {}")
    finetune, quantize = report["stages"]
    assert finetune["details"]["fake_quantized_modules"] == 4
    assert len(quantize["details"]["qat"]["mapped"]) == 4
    check_valid(model)


def test_fake_quant_hooks_leave_the_module_as_it_was():
    import torch

    from mcomp.compressors.qat.fakequant import add_fake_quant, observe_only, remove_fake_quant
    from mcomp.models.digits_cnn import digits_cnn

    torch.manual_seed(0)
    module = digits_cnn()
    keys = list(module.state_dict())
    x = torch.rand(16, 1, 8, 8)
    before = module(x).detach()
    # setup
    assert add_fake_quant(module, 0.01) == ["0", "2", "6", "8"]
    observe_only(module, [[x]])
    module.eval()
    quantized = module(x)
    # check: fake int8 changes outputs a little, gradients flow (straight-through)
    assert 0 < (quantized - before).abs().max() < 0.1
    quantized.sum().backward()
    assert module[0].weight.grad is not None and module[0].weight.grad.abs().sum() > 0
    ranges = remove_fake_quant(module)
    assert set(ranges) == {"0", "2", "6", "8"} and ranges["0"][0] == 0.0
    assert list(module.state_dict()) == keys
    assert torch.equal(module(x).detach(), before)


def test_qat_with_distill_is_an_options_error():
    from pydantic import ValidationError

    from mcomp.compressors.finetune import FinetuneOptions

    with pytest.raises(ValidationError, match="qat: true with distill"):
        FinetuneOptions(qat=True, distill={})
