"""`mcomp run --resume`: stages reused from the output folder's cache give the report a full
run gives; a changed option re-runs from its stage on; a cache file this user's mcomp did
not sign is never unpickled."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from mcomp.errors import StageError
from mcomp.progress import NullProgress
from mcomp.run.resume import MAGIC
from tests.helpers import mlp_recipe, without_timings, write_mlp_project

# channel pruning changes the module's shapes: the cache must keep its structure
STAGES = """\
  - prune: {method: channel, sparsity: 0.25}
  - finetune: {epochs: 1}
  - quantize: {mode: dynamic}
  - export: {}"""
MARKER = "pickle-ran.txt"


class RunsCode:
    """Unpickling this creates a marker file: what a hostile cache entry would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("the cache file's code ran\n",))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume-project")
    write_mlp_project(folder, samples=128)
    mlp_recipe(folder, STAGES)
    return folder


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("key") / "cache-key"


@pytest.fixture(autouse=True)
def _key(key_file, monkeypatch):
    monkeypatch.setenv("MCOMP_CACHE_KEY_FILE", str(key_file))


def run(project: Path, out: Path, *overrides: str, resume: bool = False, recipe="recipe.yaml"):
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    progress = NullProgress()
    loaded = load_recipe(str(project / recipe), overrides)
    result = run_pipeline(loaded, RunOptions(out_dir=out, resume=resume), progress)
    return result.report, progress


@pytest.fixture(scope="module")
def full_run(project, tmp_path_factory, key_file):
    """A full run of the four stages: (its report, its output folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MCOMP_CACHE_KEY_FILE", str(key_file))
        out = tmp_path_factory.mktemp("full") / "out"
        report, _ = run(project, out)
    return report, out


def copy_of(full_out: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(full_out, out)
    return out


def reused(progress: NullProgress) -> list[str]:
    return [
        m.split(":")[1].strip() for m in progress.messages if m.endswith("reused from the cache")
    ]


def test_a_failed_run_resumed_gives_the_full_runs_report(project, full_run, tmp_path):
    full_report, full_out = full_run
    out = tmp_path / "out"
    # the third stage fails after real work (onnxruntime finds no Conv to quantize)
    with pytest.raises(StageError, match="quantized no node"):
        run(project, out, "stages.2.quantize.op_types=[Conv]")
    assert len(list((out / ".mcomp" / "cache").iterdir())) == 2, "prune and finetune kept"

    report, progress = run(project, out, resume=True)

    assert reused(progress) == ["prune", "finetune"]
    assert [s["resumed"] for s in report["stages"]] == [True, True, False, False]
    assert "reused from the resume cache (--resume)" in report["stages"][0]["notes"]
    assert without_timings(report) == without_timings(full_report)
    assert (out / "model.onnx").read_bytes() == (full_out / "model.onnx").read_bytes()


def test_changing_stage_3_reuses_stages_1_and_2_only(project, full_run, tmp_path):
    full_report, full_out = full_run
    out = copy_of(full_out, tmp_path)

    again, progress = run(project, out, resume=True)
    assert reused(progress) == ["prune", "finetune", "quantize", "export"]
    assert without_timings(again) == without_timings(full_report)

    changed, progress = run(project, out, "stages.2.quantize.per_channel=false", resume=True)

    assert reused(progress) == ["prune", "finetune"]
    assert [s["resumed"] for s in changed["stages"]] == [True, True, False, False]
    assert changed["stages"][2]["details"]["per_channel"] is False
    # the cache holds the latest run's stages only
    assert len(list((out / ".mcomp" / "cache").iterdir())) == 4


def test_a_cache_entry_this_user_did_not_sign_is_never_unpickled(
    project, full_run, tmp_path, monkeypatch
):
    _, full_out = full_run
    out = copy_of(full_out, tmp_path)
    marker = tmp_path / MARKER
    entries = sorted((out / ".mcomp" / "cache").iterdir(), key=lambda p: p.stat().st_mtime)
    # stage 1's entry replaced by a pickle that runs code, with a signature that is not ours
    body = pickle.dumps({"key": entries[0].stem, "payload": RunsCode(str(marker))})
    entries[0].write_bytes(MAGIC + bytes(32) + body)

    report, progress = run(project, out, resume=True)

    assert not marker.exists(), "the file was never unpickled"
    assert any("is not signed by this user's cache key" in w for w in progress.warnings)
    assert reused(progress) == [] and not any(s["resumed"] for s in report["stages"])

    # another user's cache (another key): not one entry is trusted
    monkeypatch.setenv("MCOMP_CACHE_KEY_FILE", str(tmp_path / "another-users-key"))
    _, progress = run(project, out, resume=True)
    assert reused(progress) == []
    assert (tmp_path / "another-users-key").stat().st_mode & 0o777 == 0o600


def test_output_cache_false_keeps_no_cache_and_resume_says_so(project, tmp_path):
    out = tmp_path / "out"
    recipe = project / "export.yaml"
    recipe.write_text((project / "recipe.yaml").read_text().split("stages:")[0] + "stages:\n")
    recipe.write_text(recipe.read_text() + "  - export: {}\n")

    _, progress = run(project, out, "output.cache=false", resume=True, recipe="export.yaml")

    assert not (out / ".mcomp" / "cache").exists()
    assert any("--resume: no resume cache (output.cache is false)" in w for w in progress.warnings)
