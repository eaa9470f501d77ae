"""Data inputs: .npz arrays under any names, no labels, Python factories, sample limits, the
default calibration sample, a model with two inputs of different dtypes, and regression.

Real .npz files and factory modules in tmp_path, real torch and onnxruntime, no mocks.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from torch import nn

from mcomp.data.load import load_datasets
from mcomp.errors import DataError
from mcomp.measure.metrics import BUILTIN, resolve_metric
from mcomp.progress import NullProgress
from mcomp.recipe.load import load_recipe
from mcomp.recipe.schema import ConstraintsSpec, DataSpec, Recipe
from mcomp.report.constraints import check_constraints
from mcomp.run.pipeline import RunOptions, run_pipeline

MODULE_NAME = "data_inputs_factories"  # written into each test's tmp_path

FACTORY_SOURCE = '''
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

FEATURES, CLASSES = 8, 3


class TinyNet(nn.Module):
    def __init__(self, features=8, hidden=16, outputs=3):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TextNet(nn.Module):
    """A tiny transformer-style head: token ids (int64) and an attention mask (float)."""

    def __init__(self, vocab=20, dim=8, hidden=16, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask):
        tokens = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        pooled = tokens.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.fc2(torch.relu(self.fc1(pooled)))


def tinynet(**kwargs):
    return TinyNet(**kwargs)


def textnet(**kwargs):
    return TextNet(**kwargs)


def blobs(count, seed):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0, 1.5, size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=count)
    x = centers[y] + rng.normal(0, 1.0, size=(count, FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


def make_dataset(count=64, seed=0):
    x, y = blobs(count, seed)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def make_loader(count=64, seed=0, batch_size=10):
    return DataLoader(make_dataset(count, seed), batch_size=batch_size, shuffle=False)


class DictDataset(Dataset):
    def __init__(self, count=64, seed=0):
        self.x, self.y = blobs(count, seed)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return {"feat": self.x[index], "target": self.y[index]}


def make_dict_dataset(count=64, seed=0):
    return DictDataset(count, seed)
'''

RECIPE = """\
version: 1
seed: 0
model: {{path: model.pt, factory: "{module}:{factory}", python_path: ["."], factory_args: {args}}}
data: {data}
task: {task}
runtime: {{threads: 1, latency: {{runs: 3, warmup: 1, batch: 8}}}}
stages: {stages}
constraints: {constraints}
"""


@pytest.fixture(autouse=True)
def _restore_imports():
    """The pipeline puts `model.python_path` on sys.path; undo it and forget the factory
    module so that each test imports its own copy."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    sys.modules.pop(MODULE_NAME, None)


@pytest.fixture
def factories(tmp_path):
    """The factory module, written into tmp_path and imported from there."""
    path = tmp_path / f"{MODULE_NAME}.py"
    path.write_text(FACTORY_SOURCE)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    sys.path.insert(0, str(tmp_path))
    return module


def run(
    folder: Path,
    *,
    data: str,
    stages: str,
    factory: str = "tinynet",
    args: str = "{}",
    task: str = "classification",
    constraints: str = "{}",
):
    """Write the recipe, run it in-process; returns (RunResult, out dir)."""
    (folder / "recipe.yaml").write_text(
        RECIPE.format(
            module=MODULE_NAME,
            factory=factory,
            args=args,
            data=data,
            task=task,
            stages=stages,
            constraints=constraints,
        )
    )
    out = folder / "out"
    result = run_pipeline(
        load_recipe(str(folder / "recipe.yaml")), RunOptions(out_dir=out), NullProgress()
    )
    return result, out


def save_model(module: nn.Module, folder: Path) -> nn.Module:
    torch.save(module.state_dict(), folder / "model.pt")
    return module.eval()


def torch_out(model: nn.Module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(a) for a in arrays)).numpy()


def ort_out(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.argmax(axis=1) == labels))


def onnx_inputs(path: Path) -> list[tuple[str, int, list]]:
    """(name, element type, shape) of the graph inputs; a symbolic dim shows as its name."""
    model = onnx.load(str(path))
    return [
        (
            i.name,
            i.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim],
        )
        for i in model.graph.input
    ]


def l1_global_prune(model: nn.Module, amount: float) -> nn.Module:
    """Reference for `prune: {sparsity, scope: global}` over the Linear layers."""
    pruned = copy.deepcopy(model)
    weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Linear)]
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(amount * magnitudes.numel())
    threshold = magnitudes.kthvalue(count).values
    with torch.no_grad():
        for weight in weights:
            weight[weight.abs() <= threshold] = 0.0
    assert sum(int((w == 0).sum()) for w in weights) == count
    return pruned


# ---------------------------------------------------------------------------------------------
# .npz arrays and labels
# ---------------------------------------------------------------------------------------------


def test_npz_with_custom_array_names(tmp_path, factories):
    model = save_model(factories.tinynet(), tmp_path)
    for name, count, seed in (("train", 96, 1), ("eval", 48, 2)):
        x, y = factories.blobs(count, seed)
        # a decoy `x` of the wrong shape: only the named arrays may be read
        np.savez(tmp_path / f"{name}.npz", feat=x, target=y, x=np.zeros((count, 3), np.float32))
    split = "{{path: {}.npz, inputs: [feat], labels: target}}"
    result, out = run(
        tmp_path,
        data=f"{{train: {split.format('train')}, eval: {split.format('eval')}}}",
        stages="[{export: {}}]",
    )
    x, y = factories.blobs(48, 2)
    want = torch_out(model, x)
    base = result.report["baseline"]["metrics"]
    assert base["metric_name"] == "accuracy"
    assert base["metric"] == pytest.approx(accuracy(want, y), abs=1e-12)
    assert onnx_inputs(out / "model.onnx") == [("feat", TensorProto.FLOAT, ["batch", 8])]
    got = ort_out(out / "model.onnx", {"feat": x})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert result.report["final"]["metrics"]["metric"] == pytest.approx(accuracy(got, y), abs=1e-12)


def test_missing_label_array_says_how_to_name_it(tmp_path):
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 8), np.float32))
    spec = DataSpec.model_validate({"eval": "eval.npz"})
    with pytest.raises(DataError, match=r"no array\(s\) \['y'\].*labels: null"):
        load_datasets(spec, base_dir=tmp_path, seed=0)


def test_without_labels_the_metric_is_agreement_with_the_original(tmp_path, factories):
    torch.manual_seed(3)
    model = save_model(factories.tinynet(), tmp_path)
    for name, count, seed in (("train", 96, 1), ("eval", 48, 2)):
        np.savez(tmp_path / f"{name}.npz", x=factories.blobs(count, seed)[0])  # no labels
    result, out = run(
        tmp_path,
        data="{train: {path: train.npz, labels: null}, eval: {path: eval.npz, labels: null}}",
        # plain magnitude pruning, as l1_global_prune below (reconstruct would refit it)
        stages="[{prune: {sparsity: 0.6, reconstruct: false}}, {quantize: {mode: static}}, "
        "{export: {}}]",
        constraints="{max_accuracy_drop: 0.5}",
    )
    report = result.report
    names = {entry["metrics"]["metric_name"] for entry in [report["baseline"], *report["stages"]]}
    assert names == {"top1_agreement"}
    assert report["baseline"]["metrics"]["metric"] == 1.0
    x = factories.blobs(48, 2)[0]
    original = torch_out(model, x)
    pruned = torch_out(l1_global_prune(model, 0.6), x)
    prune = report["stages"][0]["metrics"]
    assert prune["metric"] == pytest.approx(
        np.mean(pruned.argmax(1) == original.argmax(1)), abs=1e-12
    )
    assert prune["metric"] == prune["fidelity"]["top1_agreement"]
    # the written (pruned, int8) model is scored against the original model's predictions
    got = ort_out(out / "model.onnx", {"x": x})
    final = report["final"]["metrics"]["metric"]
    assert final == pytest.approx(np.mean(got.argmax(1) == original.argmax(1)), abs=1e-12)
    (limit,) = report["constraints"]
    assert limit["name"] == "max_accuracy_drop" and limit["value"] == round(1.0 - final, 6)
    assert limit["ok"] is (1.0 - final <= 0.5) and report["ok"] is limit["ok"]


# ---------------------------------------------------------------------------------------------
# Python factories
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["make_dataset", "make_loader"])
def test_factory_returning_dataset_or_dataloader_runs(tmp_path, factories, factory):
    model = save_model(factories.tinynet(), tmp_path)

    def split(count: int, seed: int) -> str:
        return (
            f'{{factory: "{MODULE_NAME}:{factory}", '
            f"factory_args: {{count: {count}, seed: {seed}}}}}"
        )

    data = f"{{train: {split(70, 1)}, eval: {split(45, 2)}}}"
    result, out = run(
        tmp_path, data=data, stages="[{prune: {sparsity: 0.5, reconstruct: false}}, {export: {}}]"
    )
    x, y = factories.blobs(45, 2)  # 45 = 4 loader batches of 10 and one of 5
    base = result.report["baseline"]["metrics"]
    assert base["metric_name"] == "accuracy"
    assert base["metric"] == pytest.approx(accuracy(torch_out(model, x), y), abs=1e-12)
    want = torch_out(l1_global_prune(model, 0.5), x)
    got = ort_out(out / "model.onnx", {"x": x})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert result.report["final"]["metrics"]["metric"] == pytest.approx(accuracy(got, y), abs=1e-12)


@pytest.mark.parametrize("factory", ["make_dataset", "make_loader", "make_dict_dataset"])
def test_factory_splits_hold_every_sample_in_order(tmp_path, factories, factory):
    names = {"inputs": ["feat"], "labels": "target"} if factory == "make_dict_dataset" else {}
    split = {
        "factory": f"{MODULE_NAME}:{factory}",
        "factory_args": {"count": 45, "seed": 2},
        **names,
    }
    datasets = load_datasets(
        DataSpec.model_validate({"eval": split, "train": split}), base_dir=tmp_path, seed=0
    )
    x, y = factories.blobs(45, 2)
    key = names.get("inputs", ["x"])[0]
    assert list(datasets.eval.inputs) == [key]
    np.testing.assert_array_equal(datasets.eval.inputs[key], x)
    np.testing.assert_array_equal(datasets.eval.labels, y)
    assert len(datasets.train) == 45 and len(datasets.calibration) == 45


# ---------------------------------------------------------------------------------------------
# samples, calibration
# ---------------------------------------------------------------------------------------------


def write_indexed(path: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples whose first feature is their index, so that subsets can be traced back."""
    x = np.random.default_rng(0).normal(size=(count, 8)).astype(np.float32)
    x[:, 0] = np.arange(count)
    y = np.arange(count) % 3
    np.savez(path, x=x, y=y)
    return x, y


def test_samples_keeps_the_first_samples_of_each_split(tmp_path):
    x, y = write_indexed(tmp_path / "train.npz", 300)
    write_indexed(tmp_path / "eval.npz", 80)
    spec = DataSpec.model_validate(
        {
            "train": {"path": "train.npz", "samples": 50},
            "eval": {"path": "eval.npz", "samples": 20},
            "calibration_samples": 32,
        }
    )
    datasets = load_datasets(spec, base_dir=tmp_path, seed=0)
    assert len(datasets.train) == 50 and len(datasets.eval) == 20
    np.testing.assert_array_equal(datasets.train.inputs["x"], x[:50])
    np.testing.assert_array_equal(datasets.train.labels, y[:50])
    np.testing.assert_array_equal(datasets.eval.inputs["x"][:, 0], np.arange(20))
    # the calibration sample is drawn from the limited train split
    drawn = datasets.calibration.inputs["x"][:, 0]
    assert len(drawn) == 32 and drawn.max() < 50
    # `samples` above the split's size keeps everything
    spec = DataSpec.model_validate({"eval": {"path": "eval.npz", "samples": 1000}})
    assert len(load_datasets(spec, base_dir=tmp_path, seed=0).eval) == 80


def test_samples_limit_is_what_the_pipeline_evaluates(tmp_path, factories):
    model = save_model(factories.tinynet(), tmp_path)
    x, y = factories.blobs(64, 2)
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    result, _ = run(tmp_path, data="{eval: {path: eval.npz, samples: 25}}", stages="[{export: {}}]")
    want = accuracy(torch_out(model, x[:25]), y[:25])
    assert want != pytest.approx(accuracy(torch_out(model, x), y))  # the limit is visible
    assert result.report["baseline"]["metrics"]["metric"] == pytest.approx(want, abs=1e-12)


def test_default_calibration_is_a_fixed_seeded_sample_of_train(tmp_path):
    x, y = write_indexed(tmp_path / "train.npz", 300)
    spec = DataSpec.model_validate({"train": "train.npz", "calibration_samples": 40})

    def drawn(seed: int) -> np.ndarray:
        calibration = load_datasets(spec, base_dir=tmp_path, seed=seed).calibration
        indices = calibration.inputs["x"][:, 0].astype(np.int64)
        np.testing.assert_array_equal(calibration.inputs["x"], x[indices])
        np.testing.assert_array_equal(calibration.labels, y[indices])
        return indices

    first = drawn(0)
    assert len(first) == 40 and len(np.unique(first)) == 40
    assert np.all(np.diff(first) > 0)  # kept in train order
    np.testing.assert_array_equal(drawn(0), first)  # same seed, same sample
    assert not np.array_equal(drawn(1), first)  # another seed, another sample
    assert not np.array_equal(first, np.arange(40))  # a random sample, not the head
    # fewer train samples than asked: all of them
    small = DataSpec.model_validate({"train": "train.npz", "calibration_samples": 500})
    calibration = load_datasets(small, base_dir=tmp_path, seed=0).calibration
    np.testing.assert_array_equal(calibration.inputs["x"][:, 0], np.arange(300))


def test_explicit_calibration_split_is_cut_to_calibration_samples(tmp_path):
    write_indexed(tmp_path / "train.npz", 300)
    write_indexed(tmp_path / "calib.npz", 100)
    spec = DataSpec.model_validate(
        {"train": "train.npz", "calibration": "calib.npz", "calibration_samples": 30}
    )
    calibration = load_datasets(spec, base_dir=tmp_path, seed=0).calibration
    np.testing.assert_array_equal(calibration.inputs["x"][:, 0], np.arange(30))


# ---------------------------------------------------------------------------------------------
# Two inputs: int64 token ids and a float attention mask
# ---------------------------------------------------------------------------------------------

SEQ, VOCAB = 6, 20


def write_text_data(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    splits = {}
    for name, count in (("train", 96), ("eval", 48)):
        ids = rng.integers(0, VOCAB, size=(count, SEQ)).astype(np.int64)
        lengths = rng.integers(1, SEQ + 1, size=count)
        mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.float32)
        ids[mask == 0] = 0  # padding
        y = (ids[:, 0] % 3).astype(np.int64)
        np.savez(folder / f"{name}.npz", input_ids=ids, attention_mask=mask, y=y)
        splits[name] = (ids, mask, y)
    return splits


TEXT_DATA = (
    "{train: {path: train.npz, inputs: [input_ids, attention_mask]}, "
    "eval: {path: eval.npz, inputs: [input_ids, attention_mask]}}"
)
TEXT_PARAMS = VOCAB * 8 + (8 * 16 + 16) + (16 * 3 + 3)  # embedding, fc1, fc2
TEXT_INPUTS = [
    ("input_ids", TensorProto.INT64, ["batch", SEQ]),
    ("attention_mask", TensorProto.FLOAT, ["batch", SEQ]),
]


def test_two_inputs_int64_ids_and_float_mask_prune_then_export(tmp_path, factories):
    torch.manual_seed(0)
    model = save_model(factories.textnet(vocab=VOCAB), tmp_path)
    ids, mask, y = write_text_data(tmp_path)["eval"]
    result, out = run(
        tmp_path,
        data=TEXT_DATA,
        factory="textnet",
        stages="[{prune: {sparsity: 0.5, reconstruct: false}}, {export: {}}]",
    )
    report = result.report
    assert report["baseline"]["metrics"]["metric"] == pytest.approx(
        accuracy(torch_out(model, ids, mask), y), abs=1e-12
    )
    params = TEXT_PARAMS
    zeros = round(0.5 * (8 * 16 + 16 * 3))  # Linear weights only, never the embedding
    final = report["final"]["metrics"]
    assert final["params"] == params and final["nonzero_params"] == params - zeros
    assert set(report["stages"][0]["details"]["layers"]) == {"fc1", "fc2"}
    assert onnx_inputs(out / "model.onnx") == TEXT_INPUTS
    want = torch_out(l1_global_prune(model, 0.5), ids, mask)
    got = ort_out(out / "model.onnx", {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert final["metric"] == pytest.approx(accuracy(got, y), abs=1e-12)


def test_two_inputs_dynamic_quantize_then_export(tmp_path, factories):
    torch.manual_seed(0)
    model = save_model(factories.textnet(vocab=VOCAB), tmp_path)
    ids, mask, y = write_text_data(tmp_path)["eval"]
    result, out = run(
        tmp_path,
        data=TEXT_DATA,
        factory="textnet",
        stages="[{quantize: {mode: dynamic}}, {export: {}}]",
    )
    quantize = result.report["stages"][0]
    assert quantize["details"]["mode"] == "dynamic"
    # int8 weights are still the same parameters; their scales and zero points are not
    for entry in (result.report["baseline"], *result.report["stages"]):
        assert entry["metrics"]["params"] == TEXT_PARAMS, entry["name"]
    written = onnx.load(str(out / "model.onnx"))
    ops = Counter(node.op_type for node in written.graph.node)
    assert ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] >= 2
    assert onnx_inputs(out / "model.onnx") == TEXT_INPUTS
    want = torch_out(model, ids, mask)
    got = ort_out(out / "model.onnx", {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(got, want, atol=0.1 * float(np.abs(want).max()), rtol=1e-2)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9
    final = result.report["final"]["metrics"]
    assert final["metric"] == pytest.approx(accuracy(got, y), abs=1e-12)
    assert final["fidelity"]["top1_agreement"] >= 0.9


def test_a_missing_second_input_is_a_data_error(tmp_path, factories):
    save_model(factories.textnet(vocab=VOCAB), tmp_path)
    write_text_data(tmp_path)
    with pytest.raises(
        DataError,
        match=r"data.eval: samples of shape \{'input_ids': \(6,\)\} "
        r"do not fit the model.*'attention_mask'",
    ):
        run(
            tmp_path,
            data="{eval: {path: eval.npz, inputs: [input_ids]}}",
            factory="textnet",
            stages="[{export: {}}]",
        )


# ---------------------------------------------------------------------------------------------
# Regression: mse, lower is better
# ---------------------------------------------------------------------------------------------


def test_regression_metric_is_mse_and_a_rise_breaks_max_accuracy_drop(tmp_path, factories):
    rng = np.random.default_rng(0)
    direction = rng.normal(size=8).astype(np.float32)
    for name, count in (("train", 128), ("eval", 64)):
        x = rng.normal(size=(count, 8)).astype(np.float32)
        y = (x @ direction + 0.1 * rng.normal(size=count)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    torch.manual_seed(0)
    model = factories.tinynet(outputs=1)
    train = np.load(tmp_path / "train.npz")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        prediction = model(torch.from_numpy(train["x"])).squeeze(1)
        nn.functional.mse_loss(prediction, torch.from_numpy(train["y"])).backward()
        optimizer.step()
    save_model(model, tmp_path)
    result, _ = run(
        tmp_path,
        data="{train: train.npz, eval: eval.npz}",
        task="regression",
        factory="tinynet",
        args="{outputs: 1}",
        stages="[{prune: {sparsity: 0.8, reconstruct: false}}, {export: {}}]",
        constraints="{max_accuracy_drop: 0.0}",
    )
    report = result.report
    evaluation = np.load(tmp_path / "eval.npz")
    x, y = evaluation["x"], evaluation["y"]
    base, final = report["baseline"]["metrics"], report["final"]["metrics"]
    assert base["metric_name"] == final["metric_name"] == "mse"
    reference = float(np.mean((torch_out(model, x)[:, 0].astype(np.float64) - y) ** 2))
    assert base["metric"] == pytest.approx(reference, rel=1e-6)
    pruned = torch_out(l1_global_prune(model, 0.8), x)[:, 0].astype(np.float64)
    assert final["metric"] == pytest.approx(float(np.mean((pruned - y) ** 2)), rel=1e-4)
    assert "top1_agreement" not in final["fidelity"]
    # pruning made the error larger: for mse that rise is the "drop" the limit checks
    rise = final["metric"] - base["metric"]
    assert rise > 0.01
    (limit,) = report["constraints"]
    assert limit == {
        "name": "max_accuracy_drop",
        "limit": 0.0,
        "value": round(rise, 6),
        "ok": False,
    }
    assert report["ok"] is False and result.ok is False
    # the same measurements under a limit above the rise pass
    (looser,) = check_constraints(
        ConstraintsSpec(max_accuracy_drop=rise + 0.01), base, final, BUILTIN["mse"]
    )
    assert looser["ok"] is True and looser["value"] == round(rise, 6)


@pytest.mark.parametrize(
    ("metric", "before", "after", "value", "ok"),
    [
        ("mse", 0.30, 0.10, -0.20, True),  # error fell: an improvement
        ("mse", 0.10, 0.30, 0.20, False),  # error rose by 0.2 > 0.05
        ("mse", 0.10, 0.14, 0.04, True),
        ("accuracy", 0.90, 0.80, 0.10, False),  # accuracy fell
        ("accuracy", 0.80, 0.90, -0.10, True),
    ],
)
def test_max_accuracy_drop_follows_the_metric_direction(metric, before, after, value, ok):
    def measured(value: float) -> dict:
        return {
            "metric": value,
            "size_bytes": 1000,
            "size_compressed_bytes": 500,
            "latency_ms_b1": 1.0,
            "latency_ms_batch": 2.0,
        }

    (result,) = check_constraints(
        ConstraintsSpec(max_accuracy_drop=0.05), measured(before), measured(after), BUILTIN[metric]
    )
    assert result["value"] == pytest.approx(value) and result["ok"] is ok


def test_default_metric_by_task_and_labels():
    def metric(task: str, has_labels: bool) -> str:
        recipe = Recipe.model_validate(
            {"model": {"path": "m.pt"}, "task": task, "stages": [{"export": {}}]}
        )
        return resolve_metric(recipe, has_labels=has_labels).name

    assert metric("classification", True) == "accuracy"
    assert metric("classification", False) == "top1_agreement"
    assert metric("regression", True) == "mse"
    assert metric("regression", False) == "cosine"
    assert BUILTIN["mse"].higher_is_better is False
    assert BUILTIN["top1_agreement"].higher_is_better is True


def test_accuracy_counts_per_token_labels_and_rejects_a_count_mismatch():
    from mcomp.errors import DataError
    from mcomp.measure.metrics import accuracy

    outputs = np.zeros((2, 3, 4), np.float32)  # 2 sequences of 3 tokens, 4 classes
    outputs[..., 1] = 1.0
    labels = np.array([[1, 1, 0], [1, 2, 1]])
    assert accuracy(outputs, labels, outputs) == 4 / 6
    with pytest.raises(DataError, match=r"6 predictions .* for 2 labels.*task: regression"):
        accuracy(outputs, np.array([1, 1]), outputs)
