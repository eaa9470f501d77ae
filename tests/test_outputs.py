"""The output folder as one unit (in process): the set and its manifest, files of an earlier
run, the user's own files, the lock, the modes files get, and where --report may write."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml

from mcomp.errors import OutputError
from mcomp.progress import NullProgress
from mcomp.run.lock import acquire_lock
from mcomp.run.manifest import check_set
from tests.helpers import mlp_recipe, write_mlp_project

SET = ["mcomp-manifest.json", "model.onnx", "provenance.json", "recipe.resolved.yaml"]
SET = sorted([*SET, "report.json"])


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outputs-project")
    write_mlp_project(folder, samples=128)
    return folder


@pytest.fixture(autouse=True)
def _own_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MCOMP_CACHE_KEY_FILE", str(tmp_path / "cache-key"))


def run(recipe: Path, out: Path, *overrides: str, **options):
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    progress = NullProgress()
    loaded = load_recipe(str(recipe), overrides)
    result = run_pipeline(loaded, RunOptions(out_dir=out, **options), progress)
    return result, progress


def visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != ".mcomp")


def test_the_set_its_manifest_and_no_litter(project, tmp_path):
    recipe = mlp_recipe(project, "  - prune: {sparsity: 0.5}\n  - export: {}")
    out = tmp_path / "out"

    result, progress = run(recipe, out)

    assert result.ok and visible(out) == SET
    assert check_set(out) == []
    manifest = json.loads((out / "mcomp-manifest.json").read_text())
    model = (out / "model.onnx").read_bytes()
    assert manifest["files"]["model.onnx"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert result.report["artifacts"]["manifest"] == str(out / "mcomp-manifest.json")
    assert sorted(p.name for p in (out / ".mcomp").iterdir()) == ["cache", "lock"]
    assert not list(out.parent.glob(".out.mcomp-*")), "the staging folder is gone"
    assert not list(out.rglob("*.tmp"))


def test_a_second_run_removes_the_earlier_runs_files_and_keeps_the_users(project, tmp_path):
    recipe = mlp_recipe(project, "  - prune: {sparsity: 0.5}\n  - export: {}")
    out = tmp_path / "out"
    run(recipe, out, "output.torch_model=model.pt2", summary_md=out / "summary.md")
    assert {"model.pt2", "summary.md"} <= set(visible(out))
    (out / "notes.txt").write_text("mine\n")
    (out / "mine").mkdir()
    (out / "mine" / "data.bin").write_bytes(b"\x00" * 10)
    inode = os.stat(out / "notes.txt").st_ino

    _, progress = run(recipe, out)

    assert visible(out) == sorted([*SET, "mine", "notes.txt"])
    assert (out / "notes.txt").read_text() == "mine\n"
    assert os.stat(out / "notes.txt").st_ino == inode, "linked into the new set, not copied"
    assert (out / "mine" / "data.bin").read_bytes() == b"\x00" * 10
    manifest = json.loads((out / "mcomp-manifest.json").read_text())
    assert manifest["removed"] == ["model.pt2", "summary.md"]
    assert manifest["kept"] == ["mine", "notes.txt"]
    said = "\n".join(progress.messages)
    assert "removed" in said and "model.pt2" in said and "notes.txt" in said


def test_a_folder_without_a_manifest_keeps_everything_it_does_not_overwrite(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "old-style"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    (out / "model.pt2").write_bytes(b"unknown origin")
    (out / ".model.onnx.k3j9abcd.tmp").write_bytes(b"litter of an old version")

    run(recipe, out)

    assert (out / "model.onnx").read_bytes() != b"old"
    assert (out / "model.pt2").read_bytes() == b"unknown origin"
    assert not (out / ".model.onnx.k3j9abcd.tmp").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_the_umasks_mode(project, tmp_path, umask):
    import mcomp.atomic

    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    previous = os.umask(umask)
    mcomp.atomic._umask = None  # read once per process: read it again under this umask
    try:
        run(recipe, out, report_file=tmp_path / "report.json")
    finally:
        os.umask(previous)
        mcomp.atomic._umask = None
    for name in SET:
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask


def test_a_replaced_file_keeps_its_mode(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    run(recipe, out, report_file=report)
    os.chmod(out / "model.onnx", 0o640)
    os.chmod(report, 0o604)
    os.chmod(out, 0o750)

    run(recipe, out, report_file=report)

    assert stat.S_IMODE(os.stat(out / "model.onnx").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(report).st_mode) == 0o604
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o750


def test_a_second_run_into_a_locked_folder_fails_at_once(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    (out / ".mcomp").mkdir(parents=True)
    held = acquire_lock(out / ".mcomp" / "lock", folder=out, wait=False, progress=NullProgress())
    try:
        started = time.perf_counter()
        with pytest.raises(OutputError, match=r"is in use by another mcomp run \(pid \d+ on"):
            run(recipe, out)
        assert time.perf_counter() - started < 5, "refused before any work"
    finally:
        held.release()
    assert visible(out) == []


def test_wait_waits_for_the_holder_then_runs(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    (out / ".mcomp").mkdir(parents=True)
    held = acquire_lock(out / ".mcomp" / "lock", folder=out, wait=False, progress=NullProgress())
    timer = threading.Timer(1.5, held.release)
    timer.start()
    started = time.perf_counter()

    result, progress = run(recipe, out, wait=True)

    assert time.perf_counter() - started >= 1.5
    assert result.ok and visible(out) == SET
    assert any("waiting for the other mcomp run" in m for m in progress.messages)


def test_a_lock_left_by_a_dead_run_is_taken_over(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    (out / ".mcomp").mkdir(parents=True)
    # what a killed run leaves: the file with its owner line, no process holding it
    owner = {"pid": 999_999_999, "host": "elsewhere", "started": "yesterday"}
    (out / ".mcomp" / "lock").write_text(json.dumps(owner))

    result, _ = run(recipe, out)

    assert result.ok
    assert json.loads((out / ".mcomp" / "lock").read_text())["pid"] == os.getpid()


# --- --report and --summary-md destinations ----------------------------------------------


def test_report_into_a_folder_is_refused_before_any_work(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    run(recipe, out)
    before = (out / "report.json").read_bytes()
    (tmp_path / "somedir").mkdir()

    with pytest.raises(OutputError, match="--report .*somedir: is a folder"):
        run(recipe, out, report_file=tmp_path / "somedir")

    assert (out / "report.json").read_bytes() == before


def test_report_through_a_symlink_replaces_the_target_and_keeps_the_link(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    target = tmp_path / "reports" / "latest.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "r.json"
    link.symlink_to(target)

    result, _ = run(recipe, tmp_path / "out", report_file=link)

    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["ok"] == result.ok
    assert not list(target.parent.glob("*.tmp"))


def test_report_to_a_fifo_is_written_in_place(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()

    run(recipe, tmp_path / "out", report_file=fifo)

    reader.join(timeout=30)
    assert json.loads(received[0])["ok"] is True
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "still a FIFO, not replaced by a file"


def test_report_to_a_full_device_is_one_error_after_the_set(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="/dev/full: cannot write: No space left on device"):
        run(recipe, out, report_file=Path("/dev/full"))
    assert check_set(out) == [], "the message says the outputs were written: they are whole"


def test_report_and_summary_inside_the_folder_join_the_set(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    out = tmp_path / "out"
    out.mkdir()

    run(recipe, out, report_file=out / "copy.json", summary_md=out / "summary.md")

    manifest = json.loads((out / "mcomp-manifest.json").read_text())
    assert {"copy.json", "summary.md"} <= set(manifest["files"])
    assert (out / "copy.json").read_bytes() == (out / "report.json").read_bytes()
    with pytest.raises(OutputError, match="would replace the run's own model.onnx"):
        run(recipe, out, summary_md=out / "model.onnx")


# --- outputs that re-run ------------------------------------------------------------------


def test_the_resolved_recipe_runs_from_the_output_folder(project, tmp_path, monkeypatch):
    recipe = mlp_recipe(project, "  - prune: {sparsity: 0.5}\n  - export: {}")
    out = tmp_path / "build" / "out"
    first, _ = run(recipe, out)
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["model"]["path"] == os.path.relpath(project / "mlp.pt", out)
    assert resolved["output"]["dir"] == "."
    monkeypatch.chdir(tmp_path)  # anywhere else

    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    again = run_pipeline(
        load_recipe(str(out / "recipe.resolved.yaml")), RunOptions(), NullProgress()
    )

    assert again.report["artifacts"]["model"] == str(out.resolve() / "model.onnx")
    assert again.report["final"]["metrics"]["metric"] == first.report["final"]["metrics"]["metric"]
    assert check_set(out) == []


def test_baseline_onnx_beside_the_result(project, tmp_path):
    import onnxruntime as ort

    recipe = mlp_recipe(project, "  - prune: {sparsity: 0.5}\n  - export: {}")
    out = tmp_path / "out"

    result, _ = run(recipe, out, "output.baseline=baseline.onnx")

    assert result.report["artifacts"]["baseline"] == str(out / "baseline.onnx")
    session = ort.InferenceSession(str(out / "baseline.onnx"), providers=["CPUExecutionProvider"])
    import numpy as np

    x = np.load(project / "eval.npz")["x"][:8]
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    import torch

    from tests.helpers import FACTORY_MODULE

    namespace: dict = {}
    exec(FACTORY_MODULE, namespace)
    module = namespace["mlp"]()
    module.load_state_dict(torch.load(project / "mlp.pt"))
    expected = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)  # the fp32 model, not the pruned


def test_an_output_folder_that_is_a_symlink_stays_one(project, tmp_path):
    recipe = mlp_recipe(project, "  - export: {}")
    real = tmp_path / "volume" / "outputs"
    real.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(real)

    run(recipe, link)

    assert link.is_symlink() and os.readlink(link) == str(real)
    assert visible(real) == SET and check_set(real) == []
    assert not list(real.parent.glob(".outputs.mcomp-*"))


class ScratchWatcher(NullProgress):
    """Counts the ONNX files in the scratch folder whenever the run reports progress."""

    def __init__(self, scratch: Path) -> None:
        super().__init__()
        self.scratch, self.most, self.looks = scratch, 0, 0

    def _look(self) -> None:
        if self.scratch.is_dir():
            self.looks += 1
            self.most = max(self.most, len(list(self.scratch.rglob("*.onnx"))))

    def start(self, description: str, total: int | None = None) -> None:
        self._look()

    def log(self, message: str) -> None:
        self._look()
        super().log(message)


def test_the_scratch_folder_stays_small_during_a_quantize_fallback(project, tmp_path):
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    # a budget no quantization meets (outputs exactly the fp32 ones): the fallback tries one
    # trial after another
    recipe = mlp_recipe(
        project,
        "  - quantize: {mode: static, max_accuracy_drop: 0.0, fallback: {max_trials: 4}}\n"
        "  - export: {}",
        extra="metric: max_abs_diff\n",
    )
    out = tmp_path / "out"
    watcher = ScratchWatcher(out / ".mcomp" / "work")

    result = run_pipeline(load_recipe(str(recipe)), RunOptions(out_dir=out), watcher)

    trials = result.report["stages"][0]["details"]["fallback"]["trials"]
    assert len(trials) >= 3 and watcher.looks > len(trials)
    # the prepared model, and at most the copy being written and onnxruntime's own
    assert watcher.most <= 3, watcher.most
    assert not (out / ".mcomp" / "work").exists()


def test_the_current_directory_as_output_folder_is_written_file_by_file(
    project, tmp_path, monkeypatch
):
    recipe = mlp_recipe(project, "  - export: {}")
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(here)  # a folder the shell sits in cannot be switched as a whole

    with pytest.raises(OutputError, match=r"output.replace: folder: \. cannot be switched"):
        run(recipe, Path("."), "output.replace=folder")
    result, progress = run(recipe, Path("."))

    assert result.ok and check_set(here) == []
    assert visible(here) == sorted([*SET, "notes.txt"])
    assert any("outputs are replaced one by one" in m for m in progress.messages)
    assert not (here / ".mcomp" / "next").exists()
