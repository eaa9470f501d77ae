"""The fp32 graph rewrites before int8 on tiny real models: cross-layer equalization and
SmoothQuant keep the fp32 function, reduce the int8 output error where channel ranges are
badly scaled, and the stage's report says what was applied.

CNN (BatchNorm folded by onnxruntime's pre-processing):

    x ─Conv+BN─ReLU6(Clip)─ DWConv+BN ─ReLU─ Conv1×1+BN ─ReLU─ Conv1×1 ─ Conv1×1 ─ mean ─ Linear
               (skipped)     (pair: DW → 1×1)  (pair)            (pair, nothing between)

The planted CNN scales channel 0 of the 1×1 conv's output ×50 and the next 1×1 conv's input
column ÷50: the same function, one channel deciding the int8 range of the tensor between.

Attention-style block (SmoothQuant), input channel 3 of the LayerNorm ×100 (the outlier
channels of transformer activations):

    x (8×16) ─LayerNorm─ Linear 16→32 ─GELU─ Linear 32→16 ─ out
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers import run_recipe

PLANTED = 50.0
OUTLIER = 100.0
RECIPE = """\
version: 1
seed: 0
model: {path: %s}
data: {train: train.npz, eval: eval.npz, batch_size: 16, calibration_samples: 64}
runtime: {threads: 1, latency: {enabled: false}}
stages:
  - quantize: %s
"""


def _cnn(planted: bool):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),
        nn.Conv2d(16, 8, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():  # BatchNorm statistics that give the channels different ranges
        for layer in (model[1], model[4], model[7]):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.1, 4.0)
            layer.weight.uniform_(0.2, 3.0)
        if planted:
            model[9].weight[0] *= PLANTED
            model[9].bias[0] *= PLANTED
            model[10].weight[:, 0] /= PLANTED
    return model.eval()


def _block():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(16)
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            return self.down(nn.functional.gelu(self.up(self.norm(x))))

    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.norm.weight[3] *= OUTLIER
        block.norm.bias[3] += 2.0
    return block.eval()


def _export(module, shape: list[int], path: Path) -> None:
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    onnx.save(
        torch_to_onnx(ModelState.from_torch(module, [InputSpec(name="x", shape=shape)])), path
    )


def _project(folder: Path, module, shape: list[int], positions: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    for name, count in (("train", 64), ("eval", 32)):
        x = rng.uniform(0, 1, size=(count, *shape)).astype(np.float32)
        y = np.zeros((count, *positions), dtype=np.int64)  # one class per sample or position
        np.savez(folder / f"{name}.npz", x=x, y=y)
    _export(module, shape, folder / "model.onnx")
    return folder


def _prepared(folder: Path) -> onnx.ModelProto:
    """onnxruntime's pre-processing (BatchNorm folded), as the quantize stage runs it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = folder / "prepared.onnx"
    quant_pre_process(str(folder / "model.onnx"), str(target), skip_symbolic_shape=True)
    return onnx.load(str(target))


def _outputs(model, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _quantize(folder: Path, options: str):
    """The quantize stage's report entry and its int8 model's relative error on eval."""
    (folder / "recipe.yaml").write_text(RECIPE % (folder / "model.onnx", options))
    result, _ = run_recipe(folder / "recipe.yaml", folder / "out")
    x = np.load(folder / "eval.npz")["x"]
    fp32 = _outputs(onnx.load(str(folder / "model.onnx")), x)
    int8 = _outputs(onnx.load(str(folder / "out" / "model.onnx")), x)
    return result.report["stages"][0], _relative(int8, fp32)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("cle"), _cnn(planted=False), [3, 12, 12])


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("cle-planted"), _cnn(planted=True), [3, 12, 12])


@pytest.fixture(scope="module")
def block(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("smooth"), _block(), [8, 16], (8,))


def test_equalization_keeps_the_fp32_function_and_skips_relu6(cnn):
    from mcomp.compressors.quantize.equalize import equalize

    # setup
    model = _prepared(cnn)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    x = np.random.default_rng(1).normal(0, 2, size=(8, 3, 12, 12)).astype(np.float32)
    before = _outputs(model, x)
    weights = {i.name: onnx.numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    # act
    facts = equalize(model)
    # check: three pairs (depthwise → 1×1 among them), the ReLU6 pair skipped, same function
    assert facts["pairs"] == 3
    assert facts["skipped"] == {"Clip": 1}
    assert _relative(_outputs(model, x), before) < 1e-5
    changed = [
        i.name
        for i in model.graph.initializer
        if not np.array_equal(onnx.numpy_helper.to_array(i), weights[i.name])
    ]
    depthwise = next(n for n in model.graph.node if n.op_type == "Conv" and _group(n) == 8)
    assert depthwise.input[1] in changed


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def test_equalization_with_activation_ranges_and_bias_absorption_keeps_calibration_outputs(
    cnn,
):
    from mcomp.compressors.quantize.equalize import equalize
    from mcomp.compressors.quantize.statistics import collect_statistics

    model = _prepared(cnn)
    x = np.load(cnn / "train.npz")["x"]
    before = _outputs(model, x)
    stats = collect_statistics(model, {"x": x}, threads=1, histograms=False, batch_size=16)
    facts = equalize(model, absorb_bias=True, stats=stats, activation_ranges=True)
    assert facts["high_bias_absorbed"] >= 1
    # exact on every input whose pre-activations stay above the calibration minimum
    assert _relative(_outputs(model, x), before) < 1e-5


def test_equalization_reduces_int8_error_on_planted_channel_ranges(planted):
    off, error_off = _quantize(planted, "{mode: static, equalization: false}")
    on, error_on = _quantize(planted, "{mode: static, equalization: true}")
    auto, _ = _quantize(planted, "{mode: static, per_channel: false, equalization: auto}")
    default, _ = _quantize(planted, "{mode: static}")
    assert "equalization" not in off["details"]
    assert on["details"]["equalization"]["applied"] is True
    assert on["details"]["equalization"]["pairs"] == 3
    assert error_on < 0.7 * error_off
    # per-tensor weights: auto measured both and kept equalization, figures in the report
    facts = auto["details"]["equalization"]
    assert facts["applied"] is True
    assert facts["output_error"]["on"] < facts["output_error"]["off"]
    # per-channel weights (the default): auto leaves the graph alone
    assert "equalization" not in default["details"]


def test_smoothquant_keeps_the_fp32_function_folded_into_the_layernorm(block):
    from mcomp.compressors.quantize.smoothquant import smooth
    from mcomp.compressors.quantize.statistics import collect_statistics

    model = _prepared(block)
    x = np.load(block / "train.npz")["x"]
    before = _outputs(model, x)
    stats = collect_statistics(model, {"x": x}, threads=1, histograms=False, batch_size=16)
    nodes = len(model.graph.node)
    facts = smooth(model, stats, 0.5)
    assert facts["inputs"] == 2  # the LayerNorm's output and the GELU's output
    assert facts["folded"] >= 1  # into the LayerNorm's scale and bias
    assert len(model.graph.node) == nodes + facts["mul_inserted"]
    probe = np.random.default_rng(2).normal(0, 3, size=(8, 8, 16)).astype(np.float32)
    assert _relative(_outputs(model, probe), _outputs(_prepared(block), probe)) < 1e-5
    assert _relative(_outputs(model, x), before) < 1e-5


def test_smoothquant_reduces_int8_error_on_an_outlier_channel(block):
    off, error_off = _quantize(block, "{mode: static, smoothquant: false}")
    on, error_on = _quantize(block, "{mode: static, smoothquant: {enabled: true, alpha: 0.5}}")
    searched, _ = _quantize(block, "{mode: static, smoothquant: {enabled: true, alpha: auto}}")
    default, _ = _quantize(block, "{mode: static}")
    assert "smoothquant" not in off["details"]
    assert on["details"]["smoothquant"]["applied"] is True
    assert on["details"]["smoothquant"]["alpha"] == 0.5
    assert error_on < 0.85 * error_off  # measured: 0.0229 vs 0.0301
    facts = searched["details"]["smoothquant"]
    assert facts["applied"] is True
    assert set(facts["output_error"]) == {"0.3", "0.5", "0.7"}
    assert min(facts["output_error"], key=facts["output_error"].get) == str(facts["alpha"])
    # static mode's default (auto) leaves the graph alone
    assert "smoothquant" not in default["details"]


def test_rewrite_options_take_a_shorthand_and_reject_bad_values():
    from pydantic import ValidationError

    from mcomp.compressors.quantize.options import QuantizeOptions

    options = QuantizeOptions(equalization=True, smoothquant="auto")
    assert options.equalization.enabled is True
    assert options.smoothquant.enabled == "auto"
    with pytest.raises(ValidationError):
        QuantizeOptions(smoothquant={"alpha": 1.5})
    with pytest.raises(ValidationError):
        QuantizeOptions(equalization={"enable": True})


def test_smoothquant_auto_reduces_dynamic_int8_error_too(block):
    _, error_off = _quantize(block, "{mode: dynamic, smoothquant: false}")
    on, error_on = _quantize(block, "{mode: dynamic, smoothquant: auto}")
    assert on["details"]["mode"] == "dynamic"
    facts = on["details"]["smoothquant"]
    assert facts["applied"] is True
    assert facts["output_error"]["off"] > min(facts["output_error"].values())
    assert error_on < error_off


def test_the_json_schema_accepts_the_shorthand():
    from mcomp.recipe.json_schema import recipe_json_schema

    properties = recipe_json_schema()["$defs"]["QuantizeOptions"]["properties"]
    for name in ("equalization", "smoothquant"):
        assert {"type": "boolean"} in properties[name]["anyOf"]
        assert {"const": "auto", "type": "string"} in properties[name]["anyOf"]
