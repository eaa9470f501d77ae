"""Bad inputs through the real command line (`python -m mcomp run` in a subprocess).

The product promise for each: exit code 2, ONE readable `mcomp: error: ...` line on stderr
that names the file or recipe key and what to do, no Python traceback, and nothing written:
an output directory that held a good `model.onnx` keeps it byte-identical and gains no file.

All models and data are tiny (a 4-16-2 MLP, 64 samples): each subprocess takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import FAST

MODELS_PY = """
import torch
from torch import nn


def make(inputs=4, hidden=16, outputs=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with a factory module, good and bad model files and good and bad data."""
    import torch

    folder = tmp_path_factory.mktemp("project")
    (folder / "mymodels.py").write_text(MODELS_PY)
    namespace: dict = {}
    exec(MODELS_PY, namespace)  # the same factory, without putting the folder on sys.path
    module = namespace["make"]()
    torch.save(module.state_dict(), folder / "model.pt")
    torch.save(module, folder / "pickled.pt")  # a whole nn.Sequential: needs --allow-pickle

    good = (folder / "model.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(good[: len(good) // 2])
    # zeros over the pickle, zip directory intact: must not be mistaken for a pickled module
    (folder / "damaged.pt").write_bytes(good[:200] + bytes(300) + good[500:])
    rng = np.random.default_rng(0)
    (folder / "random.pt").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "garbage.onnx").write_text("this is not an ONNX model\n")
    torch.save(module.state_dict(), folder / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (folder / "legacy.pt").read_bytes()
    (folder / "legacy_truncated.pt").write_bytes(legacy[: len(legacy) // 2])
    (folder / "empty.pt").write_bytes(b"")

    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "renamed.npz", features=x, target=y)
    np.savez(folder / "wide.npz", x=rng.normal(size=(64, 5)).astype(np.float32), y=y)
    return folder


def write_recipe(
    folder: Path,
    name: str,
    *,
    model: dict | None = None,
    data: str = "data.npz",
    stages: list | None = None,
) -> Path:
    recipe = {
        "version": 1,
        "model": model or {"path": "model.pt", "factory": "mymodels:make", "python_path": ["."]},
        "data": {"train": data, "eval": data, "batch_size": 32},
        "runtime": {"threads": 1},
        "stages": stages or [{"prune": {"sparsity": 0.5}}, {"export": {}}],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def allowed_run(project, tmp_path_factory):
    """A successful run of the pickled module with --allow-pickle: (result, output dir)."""
    import subprocess
    import sys

    recipe = write_recipe(
        project, "pickled_allowed", model={"path": "pickled.pt"}, stages=[{"export": {}}]
    )
    out = tmp_path_factory.mktemp("good-out")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcomp",
            "run",
            str(recipe),
            "--out",
            str(out),
            "--allow-pickle",
            "--quiet",
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, out


@pytest.fixture(scope="module")
def good_model(allowed_run) -> bytes:
    """The model.onnx bytes a successful earlier run left in an output directory."""
    result, out = allowed_run
    assert result.returncode == 0, result.stderr
    return (out / "model.onnx").read_bytes()


@pytest.fixture
def out_dir(tmp_path, good_model) -> Path:
    """An output directory that already holds a good model from an earlier run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(good_model)
    return out


def refused(result, out: Path, good_model: bytes, *expected: str, cached: int = 0) -> str:
    """Check the promise for a refused run; return the error line.

    `cached`: the stages that finished before the failure, whose results the work area
    `.mcomp/cache` keeps for `mcomp run --resume`; with none, not even `.mcomp` is created."""
    stderr = result.stderr
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    # progress lines and the error, all mcomp's own: no library warnings or log lines
    assert lines and all(line.startswith("mcomp: ") for line in lines), stderr
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1, stderr
    line = errors[0]
    assert line.startswith("mcomp: error: ") and line == lines[-1], stderr
    assert "unexpected error" not in line, "a typed error, not the catch-all"
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert result.stdout == ""
    if out.exists():
        work_area = [".mcomp"] if cached else []
        assert sorted(p.name for p in out.iterdir()) == [*work_area, "model.onnx"], "no output"
        assert (out / "model.onnx").read_bytes() == good_model, "the good model is untouched"
        if cached:
            assert sorted(p.name for p in (out / ".mcomp").iterdir()) == ["cache", "lock"]
            assert len(list((out / ".mcomp" / "cache").iterdir())) == cached
    return line


def test_pickled_module_runs_with_allow_pickle(allowed_run):
    import onnxruntime as ort

    result, out = allowed_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == f"ok: {out / 'model.onnx'}"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 4), np.float32)})
    assert logits.shape == (3, 2)


def test_pickled_module_is_refused_without_opt_in(project, run_mcomp, out_dir, good_model):
    recipe = write_recipe(project, "pickled", model={"path": "pickled.pt"}, stages=[{"export": {}}])
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    line = refused(
        result, out_dir, good_model, "model.path:", "pickled.pt", "allow_pickle", "--allow-pickle"
    )
    assert "state_dict" in line  # and the safer alternative


def test_missing_model_file(project, run_mcomp, tmp_path, good_model):
    recipe = write_recipe(
        project, "missing", model={"path": "nowhere/missing.pt", "factory": "mymodels:make"}
    )
    out = tmp_path / "fresh-out"
    result = run_mcomp("run", str(recipe), "--out", str(out), *FAST)
    refused(result, out, good_model, "model.path:", "file not found", "missing.pt")
    assert not out.exists(), "a refused run creates no output directory"


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("truncated.pt", "corrupt or truncated"),
        ("damaged.pt", "fails its CRC check"),  # zeros over the pickle: its CRC lies
        ("random.pt", "is not a model file mcomp knows"),
        ("garbage.onnx", "is not a model file mcomp knows"),
    ],
)
def test_corrupt_model_file(project, run_mcomp, out_dir, good_model, file, expected):
    # prune first: a garbage file named .onnx must not be reported as an ONNX model
    recipe = write_recipe(
        project,
        f"corrupt_{file.replace('.', '_')}",
        model={"path": file, "factory": "mymodels:make", "python_path": ["."]},
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    line = refused(result, out_dir, good_model, "model.path:", file, expected)
    assert "allow" not in line, "a damaged file is not a pickled module to opt in to"


def test_onnx_model_onnxruntime_cannot_load(project, run_mcomp, out_dir, good_model):
    # a model onnx.checker accepts (custom domains are not checked) but onnxruntime has no
    # kernel for: a model error naming the file, not "the data does not fit the model"
    import onnx

    model = onnx.load_from_string(good_model)
    model.graph.node[0].domain = "my.ops"
    model.opset_import.append(onnx.helper.make_opsetid("my.ops", 1))
    onnx.checker.check_model(model)
    onnx.save(model, project / "unknown_op.onnx")
    recipe = write_recipe(
        project,
        "unknown_op",
        model={"path": "unknown_op.onnx"},
        stages=[{"quantize": {"mode": "dynamic"}}, {"export": {}}],
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    line = refused(
        result,
        out_dir,
        good_model,
        "model.path:",
        "unknown_op.onnx",
        "onnxruntime cannot load",
        "my.ops",
    )
    assert "data." not in line


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("legacy_truncated.pt", "(EOFError); the file may be corrupt or truncated"),
        ("empty.pt", "is not a model file mcomp knows"),
    ],
)
def test_more_corrupt_files_are_typed_errors(project, file, expected):
    # In-process (no subprocess needed): an exception with an empty message (EOFError) used
    # to escape as "unexpected error: IndexError"; the boundary only words typed errors.
    from mcomp.errors import ModelLoadError
    from mcomp.model.load import load_model
    from mcomp.recipe.schema import ModelSpec

    spec = ModelSpec(path=file, factory="mymodels:make")
    with pytest.raises(ModelLoadError) as info:
        load_model(spec, base_dir=project)
    message = str(info.value)
    assert message.startswith("model.path: ") and file in message and expected in message


def test_factory_module_outside_python_path(project, run_mcomp, out_dir, good_model, tmp_path):
    # mymodels.py sits beside the recipe, but the recipe forgot `python_path: ["."]`
    recipe = write_recipe(
        project, "no_python_path", model={"path": "model.pt", "factory": "mymodels:make"}
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST, cwd=tmp_path)
    line = refused(
        result,
        out_dir,
        good_model,
        "model.factory:",
        "cannot import 'mymodels'",
        "model.python_path",
    )
    assert "corrupt" not in line, "the model file is fine; the factory is not"


def test_factory_function_that_does_not_exist(project, run_mcomp, out_dir, good_model):
    recipe = write_recipe(
        project,
        "no_function",
        model={"path": "model.pt", "factory": "mymodels:nothing", "python_path": ["."]},
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    line = refused(
        result, out_dir, good_model, "model.factory:", "mymodels", "has no attribute 'nothing'"
    )
    assert "corrupt" not in line


def test_state_dict_that_does_not_fit_the_factory_module(project, run_mcomp, out_dir, good_model):
    recipe = write_recipe(
        project,
        "wrong_args",
        model={
            "path": "model.pt",
            "factory": "mymodels:make",
            "python_path": ["."],
            "factory_args": {"inputs": 5},
        },
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    # names the parameter whose shape differs, not only "Error(s) in loading state_dict"
    refused(
        result,
        out_dir,
        good_model,
        "model.path:",
        "model.pt",
        "size mismatch for 0.weight",
        "model.factory_args",
    )


def test_factory_args_the_factory_does_not_take(project, run_mcomp, out_dir, good_model):
    recipe = write_recipe(
        project,
        "unknown_args",
        model={
            "path": "model.pt",
            "factory": "mymodels:make",
            "python_path": ["."],
            "factory_args": {"layers": 3},
        },
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    line = refused(result, out_dir, good_model, "model.factory:", "'layers'", "model.factory_args")
    assert "corrupt" not in line


def test_npz_without_the_named_arrays(project, run_mcomp, out_dir, good_model):
    recipe = write_recipe(project, "renamed", data="renamed.npz")
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    refused(
        result,
        out_dir,
        good_model,
        "data.train:",
        "renamed.npz",
        "['x', 'y']",
        "['features', 'target']",
        "inputs: [...]",
    )


def test_data_shape_does_not_fit_the_model(project, run_mcomp, tmp_path, good_model):
    recipe = write_recipe(project, "wide", data="wide.npz")
    out = tmp_path / "fresh-out"
    result = run_mcomp("run", str(recipe), "--out", str(out), *FAST)
    refused(result, out, good_model, "data.", "(5,)", "do not fit the model", "model.inputs")
    assert not out.exists()


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("somefile", "somefile exists and is a file"),
        # refused at once, not by the final write after all the work
        ("somefile/sub", "cannot create"),
    ],
)
def test_output_directory_that_is_a_file(project, run_mcomp, tmp_path, good_model, out, expected):
    target = tmp_path / "somefile"
    target.write_bytes(good_model)
    recipe = write_recipe(project, "out_is_file")
    result = run_mcomp("run", str(recipe), "--out", str(tmp_path / out), *FAST)
    line = refused(
        result,
        tmp_path / "absent",
        good_model,
        "output.dir:",
        expected,
        "choose a directory (--out)",
    )
    assert str(target) in line
    assert "loading model" not in result.stderr, "refused before any work"
    assert target.read_bytes() == good_model


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # a key the --set wrote is placed at the --set, not at a line of the recipe file
        ("stages.0.prune.sparsty=0.3", ["error: --set stages.0.prune.sparsty=0.3: "
                                        "stages[0].prune.sparsty", "did you mean 'sparsity'"]),
        ("modle.path=x.pt", ["error: --set modle.path=x.pt: modle: unknown key 'modle'",
                             "did you mean 'model'"]),
        ("stages.7.prune.sparsity=0.3", ["set_bad_key.yaml", "--set", "no element 'stages.7'"]),
        ("seed", ["set_bad_key.yaml", "--set", "expected KEY=VALUE"]),
    ],
)  # fmt: skip
def test_set_with_a_bad_key(project, run_mcomp, out_dir, good_model, override, expected):
    recipe = write_recipe(project, "set_bad_key")
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), "--set", override, *FAST)
    refused(result, out_dir, good_model, *expected)


def test_quantize_op_type_onnxruntime_does_not_know(project, run_mcomp, out_dir, good_model):
    recipe = write_recipe(
        project,
        "not_an_op",
        stages=[{"quantize": {"mode": "static", "op_types": ["NotAnOp"]}}, {"export": {}}],
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    refused(result, out_dir, good_model, "quantize.op_types:", "NotAnOp", "quantizable:", "MatMul")


def test_run_failing_mid_way_leaves_the_previous_model_untouched(
    project, run_mcomp, out_dir, good_model
):
    # prune and finetune run, then onnxruntime quantizes nothing (an MLP has no Conv): the
    # failure comes from inside the third stage, after real work.
    recipe = write_recipe(
        project,
        "mid_way",
        stages=[
            {"prune": {"sparsity": 0.5}},
            {"finetune": {"epochs": 1}},
            {"quantize": {"mode": "static", "op_types": ["Conv"]}},
            {"export": {}},
        ],
    )
    result = run_mcomp("run", str(recipe), "--out", str(out_dir), *FAST)
    refused(result, out_dir, good_model, "quantize:", "quantized no node", "op_types", cached=2)
    assert "stage 2/4: finetune" in result.stderr, "the failure really came mid-way"


def test_the_fixtures_files_are_what_the_tests_claim(project):
    # damaged.pt keeps a readable zip directory, so the failure is inside the pickle
    import zipfile

    with zipfile.ZipFile(project / "damaged.pt") as archive:
        assert any(n.endswith("data.pkl") for n in archive.namelist())
    assert (project / "random.pt").read_bytes()[:1] != b"\x80"  # not a legacy torch pickle
    import torch

    state = torch.load(project / "model.pt", weights_only=True)  # the good one is good
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
