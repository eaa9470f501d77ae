"""Kills, signals and write failures through the real command line: whatever happens, the
output folder holds one whole set (the old one or the new one, never a mix), the messages
say which, and no temp file outlives the next run.

A killed run is stopped at a named point by the test hook MCOMP_TEST_KILL_AT (see
mcomp/run/fault_points.py). The model is an ONNX MLP, so that no run pays for a torch export.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcomp.progress import NullProgress
from mcomp.run.manifest import check_set
from mcomp.run.outputs import open_output_folder
from tests.helpers import mlp_recipe, write_mlp_project

SET = ["mcomp-manifest.json", "model.onnx", "provenance.json", "recipe.resolved.yaml"]
SET = sorted([*SET, "report.json"])
NEW = ("--set", "stages.0.quantize.per_channel=false")  # a run whose model differs
UNCHANGED = (
    "the outputs in {out} are unchanged; 2 finished stage(s) are cached: `mcomp run --resume` "
    "goes on"
)
ONNX_RECIPE = """\
version: 1
model: {path: mlp.onnx}
data: {train: train.npz, eval: eval.npz, batch_size: 64}
runtime: {threads: 1, latency: {runs: 3, warmup: 1, batch: 8}}
stages:
  - quantize: {mode: dynamic}
  - export: {}
"""


def mcomp(*args: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m mcomp ARGS` as a process (the caller waits or signals it)."""
    environment = {**os.environ, "MCOMP_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "mcomp", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The MLP project with its model as ONNX, and a recipe that quantizes it."""
    import torch

    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    folder = tmp_path_factory.mktemp("faults-project")
    os.chmod(folder, 0o755)  # the read-only test runs as another user when we are root
    write_mlp_project(folder, samples=128)
    namespace: dict = {}
    exec((folder / "tinymodels.py").read_text(), namespace)
    module = namespace["mlp"]()
    module.load_state_dict(torch.load(folder / "mlp.pt"))
    state = ModelState.from_torch(module.eval(), [InputSpec(name="x", shape=[16])])
    import onnx

    onnx.save(torch_to_onnx(state), folder / "mlp.onnx")
    (folder / "recipe.yaml").write_text(ONNX_RECIPE)
    # no stage writes a scratch file: only the final writes meet a full disk
    (folder / "export.yaml").write_text(ONNX_RECIPE.split("stages:")[0] + "stages: [export: {}]\n")
    return folder


@pytest.fixture(scope="module")
def old_set(project, tmp_path_factory) -> Path:
    """A folder holding a whole set from an earlier run."""
    out = tmp_path_factory.mktemp("old") / "out"
    code, _, stderr = finish(mcomp("run", "recipe.yaml", "--out", str(out), "-q", cwd=project))
    assert code == 0, stderr
    return out


def copy_of(old_set: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(old_set, out, symlinks=True)
    return out


def same_files(a: Path, b: Path, names=SET) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def assert_whole_and_clean(out: Path) -> None:
    assert check_set(out) == [], "one whole set, its manifest matching every file"
    assert sorted(p.name for p in out.iterdir() if p.name != ".mcomp") == SET
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("point", "expect"),
    [
        ("write:model.onnx", "old"),
        ("write:report.json", "old"),
        ("write:mcomp-manifest.json", "old"),
        ("switch", "old"),
        ("switched", "new"),
    ],
)
def test_a_kill_while_writing_leaves_one_whole_set(project, old_set, tmp_path, point, expect):
    out = copy_of(old_set, tmp_path)

    process = mcomp(
        "run",
        "recipe.yaml",
        "--out",
        str(out),
        *NEW,
        "-q",
        cwd=project,
        env={"MCOMP_TEST_KILL_AT": point},
    )
    code, _, _ = finish(process)

    assert code == -signal.SIGKILL
    assert_whole_and_clean(out)
    assert same_files(out, old_set) == (expect == "old")
    # the killed run's next set (or old one) lies beside the folder until the next run
    open_output_folder(out, progress=NullProgress()).close()
    assert not list(tmp_path.glob(".out.mcomp-*"))
    assert_whole_and_clean(out)


@pytest.mark.parametrize(
    ("point", "expect"),
    [("write:report.json", "old"), ("commit", "new"), ("rename:report.json", "new")],
)
def test_file_by_file_a_killed_commit_is_completed_by_the_next_run(
    project, old_set, tmp_path, point, expect
):
    out = copy_of(old_set, tmp_path)

    process = mcomp(
        "run",
        "recipe.yaml",
        "--out",
        str(out),
        *NEW,
        "--set",
        "output.replace=files",
        "-q",
        cwd=project,
        env={"MCOMP_TEST_KILL_AT": point},
    )
    code, _, _ = finish(process)
    assert code == -signal.SIGKILL
    open_output_folder(out, progress=NullProgress()).close()  # what the next run does first

    assert_whole_and_clean(out)
    assert same_files(out, old_set) == (expect == "old")
    assert not (out / ".mcomp" / "next").exists() and not (out / ".mcomp" / "journal.json").exists()


@pytest.mark.parametrize(
    ("point", "code", "message", "expect"),
    [
        ("write:report.json", 143, UNCHANGED, "old"),
        ("switch", 143, "the outputs in {out} were written before it stopped", "new"),
        ("write:report.json", 130, UNCHANGED, "old"),
    ],
)
def test_sigterm_and_ctrl_c_while_writing_say_what_was_written(
    project, old_set, tmp_path, point, code, message, expect
):
    out = copy_of(old_set, tmp_path)
    sig = "TERM" if code == 143 else "INT"

    process = mcomp(
        "run",
        "recipe.yaml",
        "--out",
        str(out),
        *NEW,
        "-q",
        cwd=project,
        env={"MCOMP_TEST_KILL_AT": point, "MCOMP_TEST_KILL_SIGNAL": sig},
    )
    returncode, stdout, stderr = finish(process)

    assert returncode == code, stderr
    last = stderr.strip().splitlines()[-1]
    word = "terminated (SIGTERM)" if code == 143 else "interrupted"
    assert last == f"mcomp: {word}; " + message.format(out=out), stderr
    assert "Traceback" not in stderr and stdout == ""
    assert_whole_and_clean(out)
    assert same_files(out, old_set) == (expect == "old")
    assert not list(tmp_path.glob(".out.mcomp-*")), "cleaned up at once, not by the next run"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_stage_cleans_up_and_keeps_the_finished_stages(tmp_path, sig, code):
    folder = tmp_path / "torch-project"
    folder.mkdir()
    write_mlp_project(folder, samples=128)
    mlp_recipe(folder, "  - prune: {sparsity: 0.5}\n  - finetune: {epochs: 500}\n  - export: {}")
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    process = mcomp(
        "run", "recipe.yaml", "--out", str(out), cwd=folder, env={"TMPDIR": str(scratch)}
    )
    deadline = time.monotonic() + 240
    seen = ""
    while "finetune epoch 1/" not in seen and time.monotonic() < deadline:
        seen += process.stderr.readline()
    process.send_signal(sig)
    returncode, _, stderr = finish(process)

    assert returncode == code, seen + stderr
    word = "terminated (SIGTERM)" if code == 143 else "interrupted"
    assert stderr.strip().splitlines()[-1] == (
        f"mcomp: {word}; the outputs in {out} are unchanged; 1 finished stage(s) are "
        "cached: `mcomp run --resume` goes on"
    )
    assert sorted(p.name for p in out.iterdir()) == [".mcomp"], "no output was written"
    assert sorted(p.name for p in (out / ".mcomp").iterdir()) == ["cache", "lock"]
    assert len(list((out / ".mcomp" / "cache").iterdir())) == 1
    # (a library keeps a `.ses` file there; mcomp's scratch lives in the output folder)
    assert not [p for p in scratch.iterdir() if "mcomp" in p.name], "nothing left in TMPDIR"


def small_files(limit: int):
    """As a full disk for the process: every write past `limit` bytes fails (EFBIG)."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit_file_size


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        # the quantize stage's scratch copy of the model is the first large write
        ("recipe.yaml", "File too large while the run wrote the scratch files in {scratch}"),
        # no scratch file: the model is refused at the final write
        ("export.yaml", "cannot write the outputs to {out}: File too large"),
    ],
)
def test_a_full_disk_is_one_error_and_the_old_set_stays(
    project, old_set, tmp_path, recipe, expected
):
    out = copy_of(old_set, tmp_path)
    quantizes = recipe == "recipe.yaml"
    limit = 4096 if quantizes else (project / "mlp.onnx").stat().st_size - 1
    changed = NEW if quantizes else ()

    process = mcomp(
        "run", recipe, "--out", str(out), *changed, "-q", cwd=project, preexec_fn=small_files(limit)
    )
    code, stdout, stderr = finish(process)

    assert code == 2, stderr
    scratch = out.absolute() / ".mcomp" / "work"
    assert stderr.strip().splitlines()[-1] == (
        "mcomp: error: output.dir: "
        + expected.format(scratch=scratch, out=out)
        + f"; the outputs in {out} are unchanged"
        + ("; free some space or choose another --out" if quantizes else "")
    )
    assert "Traceback" not in stderr and stdout == ""
    assert_whole_and_clean(out)
    assert same_files(out, old_set)
    assert not list(tmp_path.glob(".out.mcomp-*"))
    assert sorted(p.name for p in (out / ".mcomp").iterdir()) == ["cache", "lock"]


def test_a_read_only_output_folder_is_refused_before_any_work(project, old_set, tmp_path):
    out = copy_of(old_set, tmp_path)
    command = [sys.executable, "-m", "mcomp", "run", "recipe.yaml", "--out", str(out)]
    if os.geteuid() != 0:
        for path in [out, *out.rglob("*")]:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
    else:  # root writes anywhere: a read-only bind mount in a namespace of our own
        if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without user namespaces: no folder is unwritable")
        mount = f'mount --bind {out} {out} && mount -o remount,ro,bind {out} && exec "$@"'
        command = ["unshare", "-rm", "sh", "-c", mount, "sh", *command]
    try:
        result = subprocess.run(
            command,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MCOMP_THREADS": "1"},
        )
    finally:
        for path in [out, *out.rglob("*")]:
            os.chmod(path, 0o755)

    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mcomp: error: output.dir: cannot write to {out}: "), last
    assert last.endswith("; choose another folder (--out) or make it writable")
    assert ("Permission denied" in last) != ("Read-only file system" in last)
    assert "loading model" not in result.stderr, "refused before any work"
    assert same_files(out, old_set)


def test_report_dash_prints_the_json_and_resume_reuses_the_stages(project, old_set, tmp_path):
    out = copy_of(old_set, tmp_path)

    code, stdout, stderr = finish(
        mcomp("run", "recipe.yaml", "--out", str(out), "--report", "-", "--resume", cwd=project)
    )

    assert code == 0, stderr
    report = json.loads(stdout)  # the one document on stdout: no `ok:` line after it
    assert [s["resumed"] for s in report["stages"]] == [True, True]
    assert "stage 1/2: quantize: reused from the cache" in stderr
    assert (out / "model.onnx").read_bytes() == (old_set / "model.onnx").read_bytes()


def test_report_through_a_link_to_stdout_writes_into_the_pipe(project, tmp_path):
    link = tmp_path / "r.json"
    link.symlink_to("/proc/self/fd/1")  # what replaced /dev/stdout with a file before

    code, stdout, stderr = finish(
        mcomp(
            "run", "export.yaml", "--out", str(tmp_path / "out"), "--report", str(link), cwd=project
        )
    )

    assert code == 0, stderr
    text, status = stdout.rsplit("\n", 2)[0], stdout.splitlines()[-1]
    assert json.loads(text)["ok"] is True and status.startswith("ok: ")
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


STUCK = """
import ctypes, signal, sys
from pathlib import Path

from mcomp.interrupt import emergency_cleanup, handle_termination

scratch = Path(sys.argv[1])


def cleanup():
    scratch.rmdir()
    return "the outputs in out are unchanged"


with handle_termination(), emergency_cleanup(cleanup):
    # as a main thread deep in a library call: the signal cannot reach its Python handler.
    # The call is looked up before "ready": a signal that arrives while the main thread still
    # runs bytecode is handled there (the normal path), which is not what this tests
    sleep = ctypes.CDLL(None).sleep
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("ready", flush=True)
    sleep(120)
"""


def test_sigterm_while_stuck_in_a_library_call_still_cleans_up_and_exits_143(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK, str(scratch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "ready\n"
    # let it enter the call: on one loaded core the few bytecodes after "ready" took long
    # enough for the signal to land before it (CI simulations, 2 in ~20 runs)
    time.sleep(0.5)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 143
    assert time.monotonic() - started < 30, "the watchdog's grace, not the library call's end"
    assert stderr == "mcomp: terminated (SIGTERM); the outputs in out are unchanged\n"
    assert not scratch.exists()
