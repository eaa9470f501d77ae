"""Training stages under torchrun (2 processes, gloo on CPU): ranks agree, one writer, a failing
rank ends the run quickly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RECIPE = """\
model: {builtin: digits_cnn, python_path: ["."]}
data: {train: %s, eval: {builtin: digits, samples: 96}}
runtime: {threads: 1, latency: {runs: 2, warmup: 1, batch: 8}}
stages:
  - prune: {sparsity: 0.6}
  - finetune: {epochs: 2, batch_size: 32}
  - qat: {epochs: 1, batch_size: 32}
  - export: {}
"""

FAILING_SHARD = """\
import os

import numpy as np
import torch
import torch.utils.data as tud


def train():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("shard 1 is corrupt")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((64, 1, 8, 8), dtype=np.float32))
    return tud.TensorDataset(x, torch.from_numpy(rng.integers(0, 10, 64)))
"""


def torchrun(folder: Path, *args: str, procs: int = 2, timeout: int = 240):
    env = {**os.environ, "MCOMP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "mcomp",
        *args,
    ]
    return subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_two_processes_agree_and_only_rank_0_writes(tmp_path, run_mcomp):
    (tmp_path / "recipe.yaml").write_text(RECIPE % "{builtin: digits, samples: 256}")
    result = torchrun(tmp_path, "run", "recipe.yaml", "--out", "out")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["environment"]["world_size"] == 2
    finetune = report["stages"][1]
    assert finetune["details"]["distributed"] == {"world_size": 2, "ranks_agree": True}
    # QAT: the activation ranges each rank observed are merged, so the int8 models agree too
    assert report["stages"][2]["details"]["distributed"]["ranks_agree"] is True
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        ".mcomp",  # its lock only: no resume cache under torchrun
        "mcomp-manifest.json",
        "model.onnx",
        "provenance.json",
        "recipe.resolved.yaml",
        "report.json",
    ]
    assert [p.name for p in (tmp_path / "out" / ".mcomp").iterdir()] == ["lock"]
    assert result.stdout.count("ok: out/model.onnx") == 1  # one process reports
    # the same recipe in one process reaches the same sparsity
    single = run_mcomp("run", "recipe.yaml", "--out", "single", "--json", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    alone = json.loads(single.stdout)
    assert finetune["metrics"]["sparsity"] == alone["stages"][1]["metrics"]["sparsity"]
    assert finetune["metrics"]["nonzero_params"] == alone["stages"][1]["metrics"]["nonzero_params"]


def test_a_failing_rank_ends_the_whole_run_quickly(tmp_path):
    (tmp_path / "shards.py").write_text(FAILING_SHARD)
    (tmp_path / "recipe.yaml").write_text(RECIPE % '{factory: "shards:train"}')
    start = time.monotonic()
    result = torchrun(tmp_path, "run", "recipe.yaml", "--out", "out", timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 60  # no hang waiting for the dead rank
    assert (
        "rank 1: error: data.train.factory: shards:train raised RuntimeError: shard 1 is "
        "corrupt" in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_more_processes_than_training_samples_is_a_clear_error(tmp_path):
    (tmp_path / "recipe.yaml").write_text(RECIPE % "{builtin: digits, samples: 1}")
    result = torchrun(tmp_path, "run", "recipe.yaml", "--out", "out", timeout=120)
    assert result.returncode != 0
    assert "1 samples cannot be shared among 2 processes" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, run_mcomp):
    (tmp_path / "recipe.yaml").write_text(RECIPE % "digits")
    result = run_mcomp("run", "recipe.yaml", "--set", "runtime.device=cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert "runtime.device: cuda was asked for but torch sees no GPU" in result.stderr
    assert "Traceback" not in result.stderr
