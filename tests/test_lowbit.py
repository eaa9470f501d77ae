"""Low-bit quantization: 4-bit MatMul weights (MatMulNBits) and power-of-two int8 scales."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers import run_recipe
from tests.test_quantize import RECIPE, build_cnn, export


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """cnn.onnx (Conv+BN+ReLU x2 → Linear) and mlp.onnx (Linear 16→64→64→4) with data."""
    import torch

    folder = tmp_path_factory.mktemp("lowbit")
    rng = np.random.default_rng(0)
    for name, count in (("train", 96), ("eval", 32)):
        np.savez(
            folder / f"{name}.npz",
            x=rng.normal(size=(count, 3, 8, 8)).astype(np.float32),
            y=rng.integers(0, 4, size=count),
        )
        np.savez(
            folder / f"{name}_mlp.npz",
            x=rng.normal(size=(count, 16)).astype(np.float32),
            y=rng.integers(0, 4, size=count),
        )
    export(build_cnn(), [3, 8, 8], folder / "cnn.onnx")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 4),
    )
    export(mlp.eval(), [16], folder / "mlp.onnx")
    return folder


def quantize(folder: Path, model: str, options: str, data: str = ""):
    text = RECIPE % (model, options)
    if data:
        text = text.replace("train.npz", f"train{data}.npz").replace("eval.npz", f"eval{data}.npz")
    (folder / "recipe.yaml").write_text(text)
    result, _ = run_recipe(folder / "recipe.yaml", folder / "out")
    return result.report["stages"][0], onnx.load(str(folder / "out" / "model.onnx"))


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "options",
    [
        "{mode: weight4, weight4: {block_size: 16}}",
        "{bits: 4, weight4: {block_size: 32, symmetric: false}}",
    ],
)
def test_weight4_turns_every_linear_into_matmul_nbits(models, options):
    stage, model = quantize(models, "mlp.onnx", options, data="_mlp")
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["MatMulNBits"] == 3 and ops["Gemm"] == 0 and ops["MatMul"] == 0
    assert stage["details"]["mode"] == "weight4" and stage["details"]["bits"] == 4
    onnx.checker.check_model(model)
    x = np.load(models / "eval_mlp.npz")["x"][:8]
    reference = outputs(onnx.load(str(models / "mlp.onnx")), x)
    got = outputs(model, x)
    assert got.shape == (8, 4)
    # 4-bit weights: close to fp32, not equal
    assert 0 < np.abs(got - reference).max() < 0.2 * np.abs(reference).max()


def test_bits_4_with_another_mode_is_an_options_error():
    from pydantic import ValidationError

    from mcomp.compressors.quantize.options import QuantizeOptions

    with pytest.raises(ValidationError, match="bits: 4 is weight-only"):
        QuantizeOptions(bits=4, mode="dynamic")
    with pytest.raises(ValidationError, match="power of 2"):
        QuantizeOptions(mode="weight4", weight4={"block_size": 48})
    with pytest.raises(ValidationError, match="scale: pow2 applies to static"):
        QuantizeOptions(mode="dynamic", scale="pow2")


def test_pow2_scales_are_powers_of_two_and_the_model_stays_valid(models):
    stage, model = quantize(models, "cnn.onnx", "{scale: pow2}")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [
        inits[n.input[1]]
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits
    ]
    assert len(scales) >= 8
    for scale in scales:
        exponent = np.log2(scale.astype(np.float64))
        assert np.allclose(exponent, np.round(exponent)), scale
    onnx.checker.check_model(model)
    # still int8 kernels (bias scale = input scale x weight scale, as QLinearConv assumes)
    assert stage["details"]["int8_compute_nodes"].get("QLinearConv") == 2
    x = np.load(models / "eval.npz")["x"][:8]
    reference = outputs(onnx.load(str(models / "cnn.onnx")), x)
    assert np.abs(outputs(model, x) - reference).max() < 0.25 * np.abs(reference).max()
