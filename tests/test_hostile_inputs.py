"""Careless and broken inputs that used to pass silently, reach the "unexpected error"
catch-all or blame the wrong thing: each is now one located exit-2 line (issue 14).

Everything runs in-process through click's CliRunner on a 4-16-2 MLP with 64 samples, so
each case takes about a second; the real command line is covered by test_bad_inputs.py and
benchmarks/hostile_sweep.py.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mcomp.cli.main import cli

MODELS_PY = """
import torch
from torch import nn


def make(inputs=4, hidden=16, outputs=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
"""

BASE = """\
version: 1
model: {path: model.pt, factory: "mymodels:make", python_path: ["."]}
data: {train: TRAIN, eval: EVAL, batch_size: 32}
runtime: {threads: 1, latency: {runs: 2, warmup: 0, batch: 4}}
stages:
STAGES
"""
EXPORT = "  - export: {}"
FINETUNE = "  - finetune: {epochs: 1}\n  - export: {}"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    import torch

    folder = tmp_path_factory.mktemp("hostile")
    (folder / "mymodels.py").write_text(MODELS_PY)
    namespace: dict = {}
    exec(MODELS_PY, namespace)
    torch.save(namespace["make"]().state_dict(), folder / "model.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    arrays = {
        "good": {"x": x, "y": y},
        "labels_100": {"x": x, "y": y + 100},
        "labels_negative": {"x": x, "y": y - 5},
        "labels_fraction": {"x": x, "y": y + 0.5},
        "labels_strings": {"x": x, "y": y.astype(str)},
        "labels_one_hot": {"x": x, "y": np.eye(2)[y]},
        "x_nan": {"x": np.where(np.arange(x.size).reshape(x.shape) == 9, np.nan, x), "y": y},
        "x_inf": {"x": np.where(np.arange(x.size).reshape(x.shape) == 9, np.inf, x), "y": y},
        "x_strings": {"x": x.astype(str), "y": y},
        "x_wide": {"x": rng.normal(size=(64, 5)).astype(np.float32), "y": y},
    }
    for name, content in arrays.items():
        np.savez(folder / f"{name}.npz", **content)
    np.save(folder / "plain.npy", x)
    (folder / "plain.npy").rename(folder / "npy_named.npz")
    return folder


def recipe(folder: Path, *, train="good.npz", eval="good.npz", stages=EXPORT, extra="") -> str:
    path = folder / "r.yaml"
    text = BASE.replace("TRAIN", train).replace("EVAL", eval).replace("STAGES", stages)
    path.write_text(text + extra)
    return str(path)


def invoke(folder: Path, *args: str):
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(old)


def one_error(result, *texts: str) -> str:
    """The run failed with exit 2 and one located line holding every text."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("mcomp: error: ") and "unexpected error" not in line, line
    for text in texts:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def run(folder: Path, path: str, *args: str):
    return invoke(folder, "run", path, "--out", str(folder / "out"), "-q", *args)


LABEL_CASES = {
    "out of range": ("labels_100.npz", "data.eval: labels range from 100 to 101", "2 class"),
    "negative": ("labels_negative.npz", "data.eval: labels range from -5 to -4", "0..1"),
    "fraction": ("labels_fraction.npz", "data.eval: the labels are not whole numbers", "(e.g."),
    "strings": ("labels_strings.npz", "data.eval: the labels hold strings", "class indices"),
    "one-hot": ("labels_one_hot.npz", "data.eval: the labels are one-hot", "argmax"),
}


@pytest.mark.parametrize("case", LABEL_CASES, ids=list(LABEL_CASES))
def test_eval_labels_that_do_not_fit_fail_the_gate(project, case):
    # with max_accuracy_drop the wrong labels used to give accuracy 0 before and after: ok
    file, *texts = LABEL_CASES[case]
    path = recipe(project, eval=file, extra="constraints: {max_accuracy_drop: 0.01}\n")
    one_error(run(project, path), *texts)


@pytest.mark.parametrize(
    "file, text",
    [
        ("labels_100.npz", "data.train: labels range from 100 to 101"),
        ("labels_one_hot.npz", "data.train: the labels are one-hot"),
    ],
)
def test_train_labels_that_do_not_fit_fail_before_training(project, file, text):
    one_error(run(project, recipe(project, train=file, stages=FINETUNE)), text)


def test_train_labels_are_not_checked_when_nothing_trains(project):
    # calibration-only use of train: its labels are never read
    result = run(project, recipe(project, train="labels_one_hot.npz"))
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_eval_and_compare_check_labels_too(project, command):
    model = ("model.pt", "--factory", "mymodels:make", "--python-path", ".")
    args = [command, *model] if command == "eval" else [command, model[0], *model]
    args += ["--data", "labels_100.npz"]
    if command == "compare":
        args += ["--runs", "1", "--rounds", "1"]
    one_error(invoke(project, *args), "--data: labels range from 100 to 101")


@pytest.mark.parametrize(
    "split, file, text",
    [
        ("eval", "x_nan.npz", "data.eval: array 'x' holds NaN (1 of 256 values, the first in "
         "sample 2)"),
        ("train", "x_inf.npz", "data.train: array 'x' holds Inf"),
    ],
)  # fmt: skip
def test_nan_or_inf_in_the_data_names_the_split_and_array(project, split, file, text):
    path = recipe(project, **{split: file}, stages=FINETUNE)
    one_error(run(project, path), text)


def test_nan_in_the_weights_names_the_tensor(project, tmp_path):
    import torch

    state = torch.load(project / "model.pt", weights_only=True)
    state["2.weight"][1, 3] = float("nan")
    torch.save(state, project / "nan_model.pt")
    path = recipe(project).replace("r.yaml", "r.yaml")
    text = Path(path).read_text().replace("path: model.pt", "path: nan_model.pt")
    Path(path).write_text(text)
    one_error(run(project, path), "model.path:", "weight '2.weight' holds NaN or Inf (1 of 32")


def test_a_diverging_finetune_names_the_stage_and_epoch(project):
    stages = "  - finetune: {epochs: 3, lr: 1e30, batch_size: 16}\n  - export: {}"
    line = one_error(run(project, recipe(project, stages=stages)), "finetune", "lr")
    assert "finetune: the training loss became" in line or "finetune: after epoch" in line
    assert "epoch" in line and "diverged" in line
    assert "export parity" not in line


def test_npy_saved_as_npz_and_string_inputs(project):
    one_error(run(project, recipe(project, eval="npy_named.npz")), "a .npy file", "np.savez")
    one_error(
        run(project, recipe(project, eval="x_strings.npz")), "data.eval: array 'x'", "strings"
    )


def test_a_wrongly_shaped_eval_file_is_blamed_not_the_train_file(project):
    line = one_error(run(project, recipe(project, eval="x_wide.npz")), "data.eval:", "(5,)")
    assert "data.train" not in line


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_path_that_is_not_a_regular_file_is_said_so(project, kind):
    target = {"directory": "folder.pt", "fifo": "fifo.pt", "device": "/dev/zero"}[kind]
    if kind == "directory":
        (project / target).mkdir(exist_ok=True)
    elif kind == "fifo" and not (project / target).exists():
        os.mkfifo(project / target)
    path = recipe(project)
    Path(path).write_text(Path(path).read_text().replace("path: model.pt", f"path: {target}"))
    expected = "is a directory" if kind == "directory" else "is not a regular file"
    line = one_error(run(project, path), "model.path:", expected)
    assert "not found" not in line
    line = one_error(invoke(project, "inspect", target), expected)
    validate = one_error(invoke(project, "validate", path), expected)
    assert "not found" not in validate


def test_a_pt_file_whose_crc_is_wrong_fails(project):
    raw = bytearray((project / "model.pt").read_bytes())
    with zipfile.ZipFile(project / "model.pt") as archive:
        offset = next(i for i in archive.infolist() if i.filename.endswith("data/0")).header_offset
    # the member's data starts after its local header (whose padding torch sizes itself)
    name_length = int.from_bytes(raw[offset + 26 : offset + 28], "little")
    extra_length = int.from_bytes(raw[offset + 28 : offset + 30], "little")
    start = offset + 30 + name_length + extra_length
    raw[start + 2] ^= 0x40  # one bit of a weight: torch.load alone loads it as another weight
    (project / "crc.pt").write_bytes(bytes(raw))
    path = recipe(project)
    Path(path).write_text(Path(path).read_text().replace("path: model.pt", "path: crc.pt"))
    one_error(run(project, path), "crc.pt is corrupt", "data/0 fails its CRC check")


def test_allow_pickle_of_a_class_that_does_not_import_says_python_path(project):
    import sys

    import torch

    (project / "gone.py").write_text("import torch\n\nclass Net(torch.nn.Linear):\n    pass\n")
    sys.path.insert(0, str(project))
    try:
        import gone

        torch.save(gone.Net(4, 2), project / "pickled.pt")
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("gone", None)
        (project / "gone.py").unlink()
    line = one_error(invoke(project, "inspect", "pickled.pt", "--allow-pickle"), "python_path")
    assert "corrupt" not in line


def test_set_typos_are_reported_at_the_command_line(project):
    result = invoke(project, "validate", recipe(project), "--set", "stages.0.export.atoll=1")
    line = one_error(result, "--set stages.0.export.atoll=1: stages[0].export.atoll: unknown key")
    assert "r.yaml" not in line
    one_error(invoke(project, "validate", recipe(project), "--set", "seed=[1,2"), "--set seed=[1,2")


def test_a_factory_that_prints_leaves_stdout_to_the_result(project, tmp_path):
    # a module name of its own: in this process `mymodels` is already imported
    printing = MODELS_PY.replace(
        "    torch.manual_seed(0)", "    print('hello')\n    torch.manual_seed(0)"
    )
    (tmp_path / "printing.py").write_text("print('hello at import')\n" + printing)
    for name in ("model.pt", "good.npz"):
        (tmp_path / name).write_bytes((project / name).read_bytes())
    path = recipe(tmp_path)
    Path(path).write_text(Path(path).read_text().replace("mymodels:make", "printing:make"))
    result = invoke(tmp_path, "run", path, "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("ok: ") and result.stdout.count("\n") == 1, result.stdout
    assert "hello at import" in result.stderr and "hello\n" in result.stderr


def test_a_dataset_that_raises_mid_iteration_and_a_metric_that_raises(project):
    (project / "broken.py").write_text(
        "import numpy as np\nimport torch\n\n"
        "class Data(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 64\n"
        "    def __getitem__(self, i):\n"
        "        if i == 40:\n            raise ValueError('sample 40 is broken')\n"
        "        return np.zeros(4, np.float32), 0\n\n"
        "def data():\n    return Data()\n\n"
        "def metric(outputs, labels):\n    raise KeyError('oops')\n"
    )
    path = recipe(project, eval='{factory: "broken:data"}')
    one_error(run(project, path), "data.eval.factory:", "sample 40 is broken")
    path = recipe(project, extra='metric: "broken:metric"\n')
    one_error(run(project, path), "metric: broken:metric raised KeyError", "outputs of shape")


def test_init_on_a_folder_it_cannot_write(project, tmp_path):
    (tmp_path / "a-file").write_text("")
    line = one_error(invoke(project, "init", "--out", str(tmp_path / "a-file" / "r.yaml")))
    assert "--out: cannot write" in line


def test_out_of_range_counts_on_the_command_line_are_usage_errors(project):
    for args in (["--threads", "1000000000000"], ["--seed", "-1"]):
        result = invoke(project, "run", recipe(project), *args)
        assert result.exit_code == 2
        assert "Traceback" not in result.output and "unexpected" not in result.output


def test_mcomp_threads_env_out_of_range(project, monkeypatch):
    monkeypatch.setenv("MCOMP_THREADS", "1000000000000")
    one_error(run(project, recipe(project)), "MCOMP_THREADS=1000000000000: use 1 to 1024")


def test_a_latency_batch_larger_than_memory_fails_before_allocating(project, monkeypatch):
    from mcomp.run import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 64 * 2**20)  # 64 MiB left
    extra = "runtime: {threads: 1, latency: {batch: 65536}}\n"
    path = recipe(project)
    text = (
        Path(path)
        .read_text()
        .replace("runtime: {threads: 1, latency: {runs: 2, warmup: 0, batch: 4}}\n", "")
    )
    Path(path).write_text(text + extra)
    # 65536 samples x 16 bytes = 1 MiB: fits; the check passes and the run goes on
    result = run(project, path, "--set", "runtime.latency.runs=1")
    assert result.exit_code == 0, result.stderr
    monkeypatch.setattr(memory, "available_memory", lambda: 1 * 2**20)
    one_error(run(project, path), "runtime.latency.batch: a batch of 65536 samples needs 1.0 MiB")


def test_the_catch_all_says_it_is_a_bug(monkeypatch, tmp_path):
    from mcomp.recipe import validate

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(validate, "validate_recipe", broken)
    result = CliRunner().invoke(cli, ["validate", "quickstart"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "unexpected error: ZeroDivisionError" in line
    assert "this is a bug in mcomp, please report it" in line and "--debug" in line


def test_json_of_a_valid_run_is_unchanged_by_the_checks(project):
    # the checks reject bad input only: a good run still reports labels-based accuracy
    result = run(project, recipe(project), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baseline"]["metrics"]["metric_name"] == "accuracy"
