"""onnxruntime's transformer fusions before int8, on a tiny real transformer-style block
exported by mcomp's own exporter:

    x (8×16) ─Linear 16→32─GELU─Linear 32→16─ + x ─LayerNorm─ Linear 16→4 ─ out

The exporter writes GELU as Erf arithmetic and the Linear's bias as an Add; onnxruntime's
optimizer makes each bias + GELU one `BiasGelu`. The fused fp32 graph must compute the same
function, the stage must say what it fused, and a fusion that moved the outputs is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers import run_recipe

RECIPE = """\
version: 1
seed: 0
model: {path: model.onnx}
data: {train: train.npz, eval: eval.npz, batch_size: 16, calibration_samples: 64}
runtime: {threads: 1, latency: {enabled: false}}
stages:
  - quantize: %s
"""


def _block():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
            self.norm, self.head = nn.LayerNorm(16), nn.Linear(16, 4)

        def forward(self, x):
            x = self.norm(x + self.down(nn.functional.gelu(self.up(x))))
            return self.head(x)

    torch.manual_seed(0)
    return Block().eval()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    folder = tmp_path_factory.mktemp("fusion")
    state = ModelState.from_torch(_block(), [InputSpec(name="x", shape=[8, 16])])
    onnx.save(torch_to_onnx(state), folder / "model.onnx")
    rng = np.random.default_rng(0)
    for name, count in (("train", 64), ("eval", 32)):
        x = rng.normal(0, 1, size=(count, 8, 16)).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x, y=np.zeros((count, 8), dtype=np.int64))
    return folder


def _outputs(model, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _context(folder: Path):
    from mcomp.data.load import Datasets, Split
    from mcomp.progress import NullProgress
    from mcomp.stage import StageContext

    split = Split("calibration", {"x": np.load(folder / "train.npz")["x"]}, None)
    return StageContext(
        datasets=Datasets(None, split, None),
        seed=0,
        threads=1,
        metric=None,
        task=None,
        batch_size=16,
        original=None,
        workdir=folder,
        progress=NullProgress(),
    )


def test_the_fused_graph_computes_the_same_function(project):
    from mcomp.compressors.quantize.transformer_fusion import fusable, fuse_transformer

    model = onnx.load(str(project / "model.onnx"))
    assert fusable(model, "dynamic") and fusable(model, "static")  # GELU: both modes
    fused, facts = fuse_transformer(model, mode="dynamic", ctx=_context(project))
    assert facts["applied"] is True
    assert facts["fused"].get("BiasGelu", 0) >= 1
    ops = [node.op_type for node in fused.graph.node]
    assert "BiasGelu" in ops and "Erf" not in ops
    assert 0 <= facts["max_output_change"] <= 1e-4
    # inputs the check never saw, ten times wider: still the same function
    probe = np.random.default_rng(3).normal(0, 10, size=(16, 8, 16)).astype(np.float32)
    reference = _outputs(model, probe)
    assert np.abs(_outputs(fused, probe) - reference).max() <= 1e-5 * np.abs(reference).max()
    assert [node.op_type for node in model.graph.node].count("Erf") >= 1  # input untouched


def test_a_cnn_is_not_offered_to_the_optimizer():
    from onnx import TensorProto, helper

    from mcomp.compressors.quantize.transformer_fusion import fusable

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    assert not fusable(helper.make_model(graph), "static")
    assert not fusable(helper.make_model(graph), "dynamic")


def test_attention_alone_is_offered_in_dynamic_mode_only():
    from onnx import TensorProto, helper

    from mcomp.compressors.quantize.transformer_fusion import fusable

    # attention without GELU: only dynamic mode fuses attention (static has no QDQ form)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["q", "k"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["y"]),
        ],
        "attention",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4, 4])
            for name in ("q", "k", "v")
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    assert fusable(model, "dynamic") and not fusable(model, "static")


def test_a_fusion_that_moves_the_outputs_is_dropped(project, monkeypatch):
    from mcomp.compressors.quantize import transformer_fusion

    model = onnx.load(str(project / "model.onnx"))
    real = transformer_fusion._optimize

    def fused_then_broken(graph, *, attention):
        fused = real(graph, attention=attention)
        weight = next(w for w in fused.graph.initializer if len(w.dims) == 2)
        values = onnx.numpy_helper.to_array(weight) * 1.01  # a 1 % different weight
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        return fused

    monkeypatch.setattr(transformer_fusion, "_optimize", fused_then_broken)
    kept, facts = transformer_fusion.fuse_transformer(model, mode="static", ctx=_context(project))
    assert kept is model
    assert facts["applied"] is False and "moved" in facts["why"]
    assert facts["max_output_change"] > 1e-3
    notes = transformer_fusion.fusion_notes(facts, explicit="auto")
    assert notes and notes[0].startswith("transformer fusion not applied")


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_the_stage_fuses_by_default_and_says_so(project, mode):
    x = np.load(project / "eval.npz")["x"]
    reference = _outputs(onnx.load(str(project / "model.onnx")), x)
    errors, stages = {}, {}
    for setting in ("auto", "false"):
        (project / "recipe.yaml").write_text(
            RECIPE % f"{{mode: {mode}, transformer_fusion: {setting}}}"
        )
        out = project / f"out-{mode}-{setting}"
        result, _ = run_recipe(project / "recipe.yaml", out)
        assert result.ok
        stages[setting] = result.report["stages"][0]
        int8 = onnx.load(str(out / "model.onnx"))
        errors[setting] = np.linalg.norm(_outputs(int8, x) - reference) / np.linalg.norm(reference)
        has_bias_gelu = any(node.op_type == "BiasGelu" for node in int8.graph.node)
        assert has_bias_gelu == (setting == "auto")
    fused = stages["auto"]["details"]["transformer_fusion"]
    assert fused["applied"] is True and fused["fused"]["BiasGelu"] >= 1
    assert any(note.startswith("transformer fusion: ") for note in stages["auto"]["notes"])
    assert "transformer_fusion" in stages["auto"]["details"]["seconds"]
    assert "transformer_fusion" not in stages["false"]["details"]
    # the same int8 arithmetic on the same function: the error may differ only by rounding
    assert errors["auto"] <= 1.1 * errors["false"] + 1e-4
