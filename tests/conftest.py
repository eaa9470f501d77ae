"""Shared test fixtures. Threads are pinned to one: on 2-core CI machines oversubscription
made torch training 50x slower, and test processes must not fight each other."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ["MCOMP_THREADS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Fast latency timing for tests: the figures are checked for presence, not speed.
FAST = ["--set", "runtime.latency.runs=3", "--set", "runtime.latency.warmup=1"]
GOLDEN = Path(__file__).parent / "data" / "golden"


def pytest_addoption(parser):
    parser.addoption(
        "--regen-golden",
        action="store_true",
        help="rewrite tests/data/golden/* from the current output (review the diff)",
    )


@pytest.fixture
def golden(request):
    """Compare user-visible text with tests/data/golden/NAME; `--regen-golden` rewrites it."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--regen-golden"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        assert path.is_file(), f"no golden file {path}; create it with pytest --regen-golden"
        assert text == path.read_text(encoding="utf-8"), (
            f"{name} differs from the golden file; if the change is intended, rerun with "
            "--regen-golden and review the diff"
        )

    return check


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _cache_key_of_the_test_session(tmp_path_factory):
    """The resume cache's signing key in a folder of the session's own, not ~/.config (also
    for the subprocesses the tests start: they inherit the environment)."""
    os.environ["MCOMP_CACHE_KEY_FILE"] = str(tmp_path_factory.mktemp("config") / "cache-key")


@pytest.fixture
def run_mcomp():
    """Run `python -m mcomp ARGS` in a real subprocess; returns the CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mcomp", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "MCOMP_THREADS": "1"},
        )

    return run


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe (dedented YAML) into tmp_path and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
