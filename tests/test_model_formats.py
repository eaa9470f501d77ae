"""Every model format mcomp loads, each through a real pipeline run on a tiny trained MLP.

Real files in tmp_path, real torch and onnxruntime: a state_dict with its factory, a .pt2
ExportedProgram, TorchScript, a whole pickled module (opt-in), and an ONNX file; plus format
detection by content rather than by the file name.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from mcomp.errors import ModelLoadError, RecipeError
from mcomp.model.load import detect_format
from mcomp.progress import NullProgress
from mcomp.recipe.load import load_recipe
from mcomp.recipe.schema import ModelFormat
from mcomp.run.pipeline import RunOptions, run_pipeline
from tests.helpers import run_warnings

MODULE_NAME = "fmt_tinynet"  # the factory module each test writes into its tmp_path

FACTORY_SOURCE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, features=8, hidden=16, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def build(features=8, hidden=16, classes=3):
    return TinyNet(features, hidden, classes)
"""

FEATURES, HIDDEN, CLASSES = 8, 16, 3
WEIGHTS = FEATURES * HIDDEN + HIDDEN * CLASSES  # 176 prunable Linear weights
PARAMS = WEIGHTS + HIDDEN + CLASSES  # 195 with the biases
EVAL_SAMPLES = 64

RECIPE = """\
version: 1
seed: 0
model: {model}
data: {{train: train.npz, eval: eval.npz, batch_size: 32}}
runtime: {{threads: 1, latency: {{runs: 3, warmup: 1, batch: 8}}}}
stages: {stages}
"""


@pytest.fixture(autouse=True)
def _restore_imports():
    """The pipeline puts `model.python_path` on sys.path; undo it and forget the factory module
    so that every test imports its own copy."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    sys.modules.pop(MODULE_NAME, None)


@pytest.fixture
def project(tmp_path):
    """tmp_path with the factory module, train/eval .npz blobs and a trained TinyNet."""
    (tmp_path / f"{MODULE_NAME}.py").write_text(FACTORY_SOURCE)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.5, size=(CLASSES, FEATURES)).astype(np.float32)
    for name, count in (("train", 128), ("eval", EVAL_SAMPLES)):
        y = rng.integers(0, CLASSES, size=count)
        x = centers[y] + rng.normal(0, 1.0, size=(count, FEATURES))
        np.savez(tmp_path / f"{name}.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    factory = _import_factory_module(tmp_path)
    torch.manual_seed(0)
    model = factory.build()
    train = np.load(tmp_path / "train.npz")
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return tmp_path, model.eval()


def _import_factory_module(folder: Path):
    spec = importlib.util.spec_from_file_location(MODULE_NAME, folder / f"{MODULE_NAME}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # so that torch.save can pickle the class by reference
    spec.loader.exec_module(module)
    return module


def run(folder: Path, model: str, stages: str, **options):
    """Write the recipe, run it in-process; returns (report, progress, out dir)."""
    (folder / "recipe.yaml").write_text(RECIPE.format(model=model, stages=stages))
    out = folder / "out"
    progress = NullProgress()
    result = run_pipeline(
        load_recipe(str(folder / "recipe.yaml")), RunOptions(out_dir=out, **options), progress
    )
    assert result.ok is result.report["ok"]
    return result.report, progress, out


def eval_data(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(folder / "eval.npz")
    return data["x"], data["y"]


def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.argmax(axis=1) == labels))


def ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def l1_global_prune(model: nn.Module, amount: float) -> nn.Module:
    """The reference for `prune: {sparsity, scope: global}`: zero the smallest |w| of all
    Linear weights together."""
    pruned = copy.deepcopy(model)
    weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Linear)]
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(amount * magnitudes.numel())
    threshold = magnitudes.kthvalue(count).values
    with torch.no_grad():
        for weight in weights:
            weight[weight.abs() <= threshold] = 0.0
    assert sum(int((w == 0).sum()) for w in weights) == count  # no ties at the threshold
    return pruned


def input_signature(path: Path) -> list[tuple[str, int]]:
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return [
        (i.name, i.type.tensor_type.elem_type) for i in model.graph.input if i.name not in inits
    ]


def check_baseline(report: dict, model: nn.Module, folder: Path) -> None:
    x, y = eval_data(folder)
    base = report["baseline"]["metrics"]
    assert base["params"] == PARAMS and base["nonzero_params"] == PARAMS
    assert base["sparsity"] == 0.0
    assert base["metric_name"] == "accuracy"
    assert base["metric"] == pytest.approx(accuracy(torch_outputs(model, x), y), abs=1e-12)
    assert base["fidelity"]["top1_agreement"] == 1.0


def check_written_model(
    out: Path, report: dict, reference: nn.Module, folder: Path, *, int8: bool = False
) -> np.ndarray:
    """model.onnx loads in onnxruntime, matches the torch reference (fp32: to 1e-4; int8: to a
    tenth of the output range), and is what the report measured; returns its eval outputs."""
    x, y = eval_data(folder)
    model_path = out / "model.onnx"
    onnx.checker.check_model(onnx.load(str(model_path)))
    assert input_signature(model_path) == [("x", TensorProto.FLOAT)]
    got = ort_outputs(model_path, {"x": x})
    want = torch_outputs(reference, x)
    assert got.shape == (EVAL_SAMPLES, CLASSES)
    atol = 0.1 * float(np.abs(want).max()) if int8 else 1e-4
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-3)
    final = report["stages"][-1]["metrics"]
    assert final["metric"] == pytest.approx(accuracy(got, y), abs=1e-12)
    slack = 0.05 if int8 else 1.5 / EVAL_SAMPLES
    assert final["metric"] == pytest.approx(accuracy(want, y), abs=slack)
    assert report["final"]["metrics"] == final
    assert Path(report["artifacts"]["model"]) == model_path
    return got


# ---------------------------------------------------------------------------------------------
# One pipeline run per format
# ---------------------------------------------------------------------------------------------


def test_state_dict_with_factory_prunes_and_exports(project):
    folder, model = project
    torch.save(model.state_dict(), folder / "weights.pt")
    report, progress, out = run(
        folder,
        f'{{path: weights.pt, factory: "{MODULE_NAME}:build", python_path: ["."], '
        f"factory_args: {{hidden: {HIDDEN}}}}}",
        "[{prune: {sparsity: 0.5, reconstruct: false}}, {export: {}}]",
    )
    # a busy machine while latency is timed is said too; that is not about the model
    about_the_model = [w for w in progress.warnings if not w.startswith("latency: other processes")]
    assert report["ok"] and about_the_model == []
    check_baseline(report, model, folder)
    pruned_ref = l1_global_prune(model, 0.5)
    x, y = eval_data(folder)
    prune, export = report["stages"]
    zeros = round(0.5 * WEIGHTS)
    for stage in (prune, export):
        metrics = stage["metrics"]
        assert metrics["params"] == PARAMS
        assert metrics["nonzero_params"] == PARAMS - zeros
        assert metrics["sparsity"] == round(zeros / PARAMS, 6)
    assert prune["details"]["pruned_weights"] == zeros
    assert prune["metrics"]["metric"] == pytest.approx(
        accuracy(torch_outputs(pruned_ref, x), y), abs=1e-12
    )
    assert export["model_kind"] == "onnx" and export["details"]["parity_max_abs_diff"] < 1e-4
    check_written_model(out, report, pruned_ref, folder)
    written = onnx.load(str(out / "model.onnx"))
    weights = [numpy_helper.to_array(i) for i in written.graph.initializer if len(i.dims) == 2]
    assert sum(w.size for w in weights) == WEIGHTS
    assert sum(int((w == 0).sum()) for w in weights) == zeros  # the zeros are in the file


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_state_dict_of_a_wrapped_model_loads_into_the_factory_module(project, prefix):
    # setup: keys as DataParallel / DDP (`module.`) or torch.compile (`_orig_mod.`) save them
    folder, model = project
    wrapped = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save(wrapped, folder / "weights.pt")
    # act
    report, progress, out = run(
        folder,
        f'{{path: weights.pt, factory: "{MODULE_NAME}:build", python_path: ["."]}}',
        "[{export: {}}]",
    )
    # check: the weights reached the bare module (outputs equal the original's)
    assert report["ok"] and run_warnings(progress) == []
    check_baseline(report, model, folder)
    check_written_model(out, report, model, folder)


def test_state_dict_whose_module_has_the_prefix_itself_is_loaded_as_it_is(project):
    """A factory module whose own parameters live under `module.` gets the keys unchanged."""
    folder, model = project
    source = FACTORY_SOURCE + (
        "\n\nclass Holder(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.module = TinyNet()\n\n"
        "    def forward(self, x):\n"
        "        return self.module(x)\n\n\n"
        "def holder():\n"
        "    return Holder()\n"
    )
    (folder / f"{MODULE_NAME}.py").write_text(source)
    sys.modules.pop(MODULE_NAME, None)  # the fixture imported the first version
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, folder / "weights.pt")
    report, _, out = run(
        folder,
        f'{{path: weights.pt, factory: "{MODULE_NAME}:holder", python_path: ["."]}}',
        "[{export: {}}]",
    )
    assert report["ok"]
    check_written_model(out, report, model, folder)


def test_exported_program_pt2(project):
    folder, model = project
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.zeros(2, FEATURES),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "model.pt2"))
    assert detect_format(folder / "model.pt2") == ModelFormat.EXPORTED_PROGRAM
    report, _, out = run(folder, "{path: model.pt2}", "[{export: {}}]")
    assert report["ok"]
    check_baseline(report, model, folder)
    export = report["stages"][0]["metrics"]
    assert export["params"] == PARAMS and export["sparsity"] == 0.0
    check_written_model(out, report, model, folder)


@pytest.mark.parametrize("batch", [1, 2])
def test_exported_program_with_fixed_batch_is_refused_with_the_fix(project, batch):
    """torch.export.export without dynamic_shapes fixes the batch axis; the run must say so at
    load time instead of failing mid-run with torch's bare 'Guard failed' assertion."""
    folder, model = project
    program = torch.export.export(model, (torch.zeros(batch, FEATURES),))
    torch.export.save(program, str(folder / "model.pt2"))
    with pytest.raises(ModelLoadError, match=rf"fixed batch size \(x: {batch}\).*dynamic_shapes"):
        run(folder, "{path: model.pt2}", "[{export: {}}]")
    assert not (folder / "out").exists()


def test_torchscript_traced(project):
    folder, model = project
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still saves and loads
        torch.jit.save(torch.jit.trace(model, torch.zeros(2, FEATURES)), str(folder / "model.ts"))
    assert detect_format(folder / "model.ts") == ModelFormat.TORCHSCRIPT
    report, _, out = run(folder, "{path: model.ts}", "[{export: {}}]")
    assert report["ok"]
    check_baseline(report, model, folder)
    assert report["baseline"]["metrics"]["macs"] == WEIGHTS  # batch 1: one MAC per weight
    export = report["stages"][0]["metrics"]
    assert export["params"] == PARAMS and export["sparsity"] == 0.0
    check_written_model(out, report, model, folder)


def test_pickled_module_needs_opt_in_then_prunes_and_exports(project):
    folder, model = project
    torch.save(model, folder / "whole.pt")
    sys.modules.pop(MODULE_NAME)  # the run must import the class through model.python_path
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        run(folder, '{path: whole.pt, python_path: ["."]}', "[{export: {}}]")
    assert not (folder / "out").exists()
    report, _, out = run(
        folder,
        '{path: whole.pt, python_path: ["."], allow_pickle: true}',
        "[{prune: {sparsity: 0.5, scope: layer, reconstruct: false}}, {export: {}}]",
    )
    assert report["ok"]
    check_baseline(report, model, folder)
    # per layer: half of each layer's weights
    zeros = round(0.5 * FEATURES * HIDDEN) + round(0.5 * HIDDEN * CLASSES)
    prune = report["stages"][0]
    assert prune["details"]["layers"] == {"fc1": 0.5, "fc2": 0.5}
    assert report["final"]["metrics"]["nonzero_params"] == PARAMS - zeros
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer in (reference.fc1, reference.fc2):
            weight = layer.weight
            threshold = weight.abs().flatten().kthvalue(round(0.5 * weight.numel())).values
            weight[weight.abs() <= threshold] = 0.0
    check_written_model(out, report, reference, folder)


def write_onnx_mlp(model: nn.Module, path: Path) -> None:
    """The TinyNet as a hand-built ONNX graph (Gemm-Relu-Gemm, dynamic batch), opset 17."""
    w1, b1 = model.fc1.weight.detach().numpy(), model.fc1.bias.detach().numpy()
    w2, b2 = model.fc2.weight.detach().numpy(), model.fc2.bias.detach().numpy()
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1, name="fc2"),
        ],
        "tinynet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def test_onnx_file_static_quantize_then_export(project):
    folder, model = project
    write_onnx_mlp(model, folder / "model.onnx")
    report, _, out = run(
        folder,
        "{path: model.onnx}",
        "[{quantize: {mode: static, weight_type: int8}}, {export: {}}]",  # int8 counted below
    )
    assert report["ok"]
    check_baseline(report, model, folder)
    assert report["baseline"]["model_kind"] == "onnx"
    quantize, export = report["stages"]
    assert quantize["details"]["mode"] == "static"
    assert quantize["details"]["int8_nodes"]["QuantizeLinear"] > 0
    assert not any("converted" in note for note in quantize["notes"])  # already ONNX
    for stage in (quantize, export):
        # int8 weights and int32 biases still count as parameters; scales do not
        assert stage["metrics"]["params"] == PARAMS
        assert stage["model_kind"] == "onnx"
    assert export["details"]["verified"].startswith("onnx.checker")
    written = onnx.load(str(out / "model.onnx"))
    ops = Counter(node.op_type for node in written.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    int8 = [i for i in written.graph.initializer if i.data_type == TensorProto.INT8]
    assert sum(numpy_helper.to_array(i).size for i in int8) >= WEIGHTS
    # int8 is close to, not equal to, the float model
    got = check_written_model(out, report, model, folder, int8=True)
    x, _ = eval_data(folder)
    assert np.mean(got.argmax(1) == torch_outputs(model, x).argmax(1)) >= 0.95
    assert report["final"]["metrics"]["fidelity"]["top1_agreement"] >= 0.95


# ---------------------------------------------------------------------------------------------
# Format detection by content, not by file name
# ---------------------------------------------------------------------------------------------


def test_detect_format_reads_the_content_not_the_name(project):
    folder, model = project
    torch.save(model.state_dict(), folder / "weights.onnx")
    write_onnx_mlp(model, folder / "model.bin")
    torch.save(model, folder / "whole.onnx")
    (folder / "notes.onnx").write_text("not a model at all\n")
    assert detect_format(folder / "weights.onnx") == ModelFormat.STATE_DICT
    assert detect_format(folder / "model.bin") == ModelFormat.ONNX
    assert detect_format(folder / "whole.onnx") == ModelFormat.STATE_DICT  # torch.save archive
    with pytest.raises(ModelLoadError, match="not a model file mcomp knows"):
        detect_format(folder / "notes.onnx")


def test_state_dict_named_onnx_is_loaded_as_torch_and_prunes(project):
    folder, model = project
    torch.save(model.state_dict(), folder / "weights.onnx")
    report, _, out = run(
        folder,
        f'{{path: weights.onnx, factory: "{MODULE_NAME}:build", python_path: ["."]}}',
        "[{prune: {sparsity: 0.5, reconstruct: false}}, {export: {}}]",
    )
    assert report["ok"]
    assert report["baseline"]["model_kind"] == "torch"
    check_baseline(report, model, folder)
    assert report["final"]["metrics"]["nonzero_params"] == PARAMS - round(0.5 * WEIGHTS)
    check_written_model(out, report, l1_global_prune(model, 0.5), folder)


def test_onnx_named_bin_is_loaded_as_onnx(project):
    folder, model = project
    write_onnx_mlp(model, folder / "model.bin")
    report, _, out = run(folder, "{path: model.bin}", "[{quantize: {mode: dynamic}}, {export: {}}]")
    assert report["ok"]
    assert report["baseline"]["model_kind"] == "onnx"
    check_baseline(report, model, folder)
    assert report["stages"][0]["details"]["mode"] == "dynamic"
    check_written_model(out, report, model, folder, int8=True)


def test_torch_stage_on_onnx_named_bin_is_a_recipe_error(project):
    """The stage-order check must see the ONNX content too, not crash mid-run."""
    folder, model = project
    write_onnx_mlp(model, folder / "model.bin")
    with pytest.raises(
        RecipeError, match="stage 'prune' works on torch models, but the model file is ONNX"
    ):
        run(folder, "{path: model.bin}", "[{prune: {sparsity: 0.5}}, {export: {}}]")
    assert not (folder / "out").exists()
