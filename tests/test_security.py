"""Nothing from a file runs code without an opt-in (docs/security.md).

A real `torch.export.save` archive is made malicious three ways (the ways torch 2.13's
`torch.export.load` runs code from a file): its `data/sample_inputs` pickle replaced by one
whose `__reduce__` creates a marker file; a symbolic size (`expr_str`, evaluated by
`sympy.sympify`) that creates it; a guard (`guards_code`, executed by the loaded module) that
creates it. Every command that loads a model must refuse each with one exit-2 line saying what
was refused and how to opt in, and the marker must never appear.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
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

RECIPE = """\
version: 1
model: {model}
data: {{train: data.npz, eval: data.npz, batch_size: 32}}
runtime: {{threads: 1, latency: {{runs: 2, warmup: 0, batch: 4}}}}
stages:
{stages}
"""


class Evil:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite(src: Path, dst: Path, replace) -> None:
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            out.writestr(info, replace(info.filename, archive.read(info.filename)))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """good.pt2, the three malicious archives, a state_dict with its factory, data."""
    import torch

    folder = tmp_path_factory.mktemp("security")
    (folder / "mymodels.py").write_text(MODELS_PY)
    namespace: dict = {}
    exec(MODELS_PY, namespace)
    module = namespace["make"]().eval()
    torch.save(module.state_dict(), folder / "model.pt")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (torch.randn(3, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "good.pt2")
    marker = folder / "MARKER"
    pickled = io.BytesIO()
    torch.save(Evil(marker), pickled)
    command = f"__import__('os').system('touch {marker}')"

    def sample(name: str, raw: bytes) -> bytes:
        return pickled.getvalue() if "/data/sample_inputs/" in name else raw

    def expression(name: str, raw: bytes) -> bytes:
        if not name.endswith("/models/model.json"):
            return raw
        return raw.decode().replace('"Symbol(', f'"{command} or Symbol(', 1).encode()

    def guard(name: str, raw: bytes) -> bytes:
        if not name.endswith("/models/model.json"):
            return raw
        document = json.loads(raw)
        document["guards_code"] = [f"{command} == 0"]
        return json.dumps(document).encode()

    def target(name: str, raw: bytes) -> bytes:
        if not name.endswith("/models/model.json"):
            return raw
        document = json.loads(raw)
        node = document["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.system"  # torch resolves it by getattr and calls it
        return json.dumps(document).encode()

    kinds = (("sample", sample), ("expr", expression), ("guard", guard), ("target", target))
    for kind, replace in kinds:
        _rewrite(folder / "good.pt2", folder / f"evil_{kind}.pt2", replace)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    return folder


def write(folder: Path, name: str, model: str, stages: str = "  - export: {}") -> Path:
    path = folder / name
    path.write_text(RECIPE.format(model=model, stages=stages))
    return path


def invoke(folder: Path, *args: str):
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(old)


def assert_refused(result, folder: Path, *texts: str) -> None:
    assert not (folder / "MARKER").exists(), "code from the file ran"
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("mcomp: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr  # after progress lines
    assert "Traceback" not in result.stderr
    line = lines[-1]
    assert "unexpected error" not in line
    assert "allow_pickle" in line and "--allow-pickle" in line, line  # how to opt in
    for text in texts:
        assert text in line, line


STATE_DICT = '{path: model.pt, factory: "mymodels:make", python_path: ["."]}'

ENTRY_POINTS = {
    "run": lambda f: ("run", str(write(f, "r.yaml", "{path: evil_sample.pt2}")), "--out", "o"),
    "run --set model.path": lambda f: (
        "run",
        str(write(f, "s.yaml", STATE_DICT)),
        "--set",
        "model.path=evil_sample.pt2",
        "--set",
        "model.factory=null",
        "--out",
        "o",
    ),
    "inspect": lambda f: ("inspect", "evil_sample.pt2"),
    "eval": lambda f: ("eval", "evil_sample.pt2", "--data", "data.npz"),
    "compare A": lambda f: ("compare", "evil_sample.pt2", "good.pt2", "--runs", "1"),
    "compare B": lambda f: ("compare", "good.pt2", "evil_sample.pt2", "--runs", "1"),
    "sensitivity": lambda f: (
        "sensitivity",
        str(write(f, "p.yaml", "{path: evil_sample.pt2}", "  - prune: {sparsity: 0.5}")),
        "--out",
        "sens",
        "--ratios",
        "0.5",
    ),
    "distill teacher": lambda f: (
        "run",
        str(
            write(
                f,
                "t.yaml",
                STATE_DICT,
                "  - distill: {epochs: 1, teacher: {path: evil_sample.pt2}}\n  - export: {}",
            )
        ),  # fmt: skip
        "--out",
        "o",
    ),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=list(ENTRY_POINTS))
def test_malicious_pt2_pickle_is_refused_at_every_entry_point(project: Path, entry: str):
    result = invoke(project, *ENTRY_POINTS[entry](project))
    assert_refused(result, project, "evil_sample.pt2", "data/sample_inputs", "posix.system")


@pytest.mark.parametrize(
    "kind, what",
    [("expr", "symbolic expression"), ("guard", "guard"), ("target", "node target")],
    ids=["expr", "guard", "target"],
)
@pytest.mark.parametrize("command", ["inspect", "run"])
def test_pt2_expressions_and_guards_that_are_code_are_refused(project, kind, what, command):
    if command == "inspect":
        args = ("inspect", f"evil_{kind}.pt2")
    else:
        args = (
            "run",
            str(write(project, f"{kind}.yaml", f"{{path: evil_{kind}.pt2}}")),
            "--out",
            "o",
        )
    result = invoke(project, *args)
    assert_refused(result, project, f"evil_{kind}.pt2", what, "not plain torch.export output")


def test_a_plain_pt2_still_loads_everywhere(project: Path):
    # the refusals above are not a refusal of every .pt2: also not of one with real guards
    import torch

    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x[:, :4] + y.sum()

    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(
        TwoInputs(),
        (torch.randn(4, 6), torch.randn(4, 6)),
        dynamic_shapes=({0: batch, 1: torch.export.Dim("width", min=5)}, {0: batch}),
    )
    assert program._guards_code, "the fixture must carry guards"
    torch.export.save(program, project / "guarded.pt2")
    result = invoke(project, "inspect", "guarded.pt2")
    assert result.exit_code == 0, result.stderr
    assert invoke(project, "inspect", "good.pt2").exit_code == 0
    result = invoke(project, "eval", "good.pt2", "--data", "data.npz", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 64


def test_the_loader_guard_refuses_a_pickle_the_archive_check_would_miss(project: Path):
    # Defence in depth: torch.export.load itself, run under the guard, cannot unpickle the
    # malicious member even when the archive check is skipped.
    import torch

    from mcomp.model.pt2 import _Refused, _unpickling_refused

    with pytest.raises(_Refused, match="posix.system"), _unpickling_refused():
        torch.export.load(str(project / "evil_sample.pt2"))
    assert not (project / "MARKER").exists()
    assert torch.load is torch.serialization.load  # the guard is undone


def test_real_command_line_refuses_the_malicious_pt2(project: Path, run_mcomp):
    recipe = write(project, "cli.yaml", "{path: evil_sample.pt2}")
    result = run_mcomp("run", str(recipe), "--out", str(project / "cli-out"))
    assert not (project / "MARKER").exists()
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith("mcomp: error: ")
    assert "Traceback" not in result.stderr
    assert "refuses" in result.stderr and "--allow-pickle" in result.stderr


def test_a_pickle_the_safe_loader_blocks_is_called_refused_not_corrupt(project: Path):
    import torch

    torch.save({"w": Evil(project / "MARKER")}, project / "blocked.pt")
    result = invoke(project, "inspect", "blocked.pt", "--factory", "mymodels:make")
    assert_refused(result, project, "refuses", "posix.system")
    assert "corrupt" not in result.stderr


def test_python_path_cannot_shadow_mcomps_own_dependencies(tmp_path: Path, run_mcomp):
    # setup: the factory's folder also holds modules named like mcomp's lazily imported
    # dependencies; importing any of them would create the marker
    import torch

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mymodels.py").write_text(MODELS_PY)
    marker = tmp_path / "MARKER"
    for name in ("yaml", "onnx", "onnxruntime", "onnxscript", "torch_pruning", "pydantic"):
        (lib / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write({name!r})\n")
    namespace: dict = {}
    exec(MODELS_PY, namespace)
    torch.save(namespace["make"]().state_dict(), tmp_path / "model.pt")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    model = '{path: model.pt, factory: "mymodels:make", python_path: ["lib"]}'
    stages = "  - prune: {method: channel, sparsity: 0.5}\n  - export: {}"
    recipe = write(tmp_path, "r.yaml", model, stages)
    # act: the working directory is not lib/ (`python -m` puts the cwd first on sys.path)
    result = run_mcomp("run", str(recipe), "--out", str(tmp_path / "out"), "-q", cwd=tmp_path)
    # check
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), f"{marker.read_text()} from python_path shadowed the library"


def _limit_memory() -> None:
    limit = 1536 * 2**20  # mcomp validate needs ~150 MiB; the bomb expanded needs > 6 GiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_alias_bomb_is_refused_fast_under_a_memory_limit(tmp_path: Path):
    lines = ["version: 1", "model: {builtin: digits_cnn}", "stages: [export: {}]"]
    lines.append('a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    assert recipe.stat().st_size < 600  # 9 levels: 9^10 values from a few hundred bytes
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mcomp", "validate", str(recipe)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
    )
    assert time.monotonic() - start < 20
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "expands to more than 100000 values" in result.stderr
    assert "bomb.yaml:9:" in result.stderr  # a5, the first level past the bound (9^6 values)


def test_alias_bomb_in_a_set_value_is_refused_naming_the_command_line(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {builtin: digits_cnn}\nstages: [export: {}]\n")
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    value = "model.factory_args={bomb: [" + ", ".join(items) + "]}"
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["validate", str(recipe), "--set", value])
    assert time.monotonic() - start < 5
    assert result.exit_code == 2
    assert result.stderr.startswith("mcomp: error: --set model.factory_args=")
    assert "expands to more than 100000 values" in result.stderr


def test_a_few_small_aliases_stay_allowed(tmp_path: Path):
    # a block of training options written once and merged into a second stage
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {builtin: digits_cnn}\ndata: {train: digits, eval: digits}\n"
        "stages:\n"
        "  - finetune: &train {epochs: 1, lr: 1e-3}\n"  # YAML 1.2 float: 1e-3 is a number
        "  - distill: {<<: *train, alpha: 0.5}\n"
        "  - export: {}\n"
    )
    result = CliRunner().invoke(cli, ["validate", str(recipe), "--json"])
    assert result.exit_code == 0, result.stderr
    stages = json.loads(result.stdout)["recipe"]["stages"]
    assert stages[1]["distill"]["lr"] == 0.001 and stages[1]["distill"]["epochs"] == 1
