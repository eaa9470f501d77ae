"""Small builders shared by tests: tiny models, data files and a direct pipeline runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FACTORY_MODULE = """
import torch
from torch import nn


def mlp(inputs=16, hidden=32, classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, classes))
"""


def write_mlp_project(folder: Path, samples: int = 256) -> None:
    """A factory module, a trained-ish state_dict and train/eval .npz files for a 4-class MLP."""
    import torch

    (folder / "tinymodels.py").write_text(FACTORY_MODULE)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2.0, size=(4, 16)).astype(np.float32)
    for name, count in (("train", samples), ("eval", samples // 2)):
        y = rng.integers(0, 4, size=count)
        x = centers[y] + rng.normal(0, 1.0, size=(count, 16)).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )
    data = np.load(folder / "train.npz")
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    torch.save(model.state_dict(), folder / "mlp.pt")


MLP_RECIPE = """\
version: 1
seed: 0
model: {path: mlp.pt, factory: "tinymodels:mlp", python_path: ["."]}
data: {train: train.npz, eval: eval.npz, batch_size: 64}
runtime: {threads: 1, latency: {runs: 3, warmup: 1, batch: 8}}
stages:
%s
"""


def mlp_recipe(folder: Path, stages: str, extra: str = "") -> Path:
    """The MLP recipe with `stages`; `extra` adds top-level keys (a `runtime:` line in it
    replaces the default one: a key given twice is an error)."""
    text = MLP_RECIPE % stages
    if any(line.startswith("runtime:") for line in extra.splitlines()):
        text = "\n".join(line for line in text.splitlines() if not line.startswith("runtime:"))
        text += "\n"
    path = folder / "recipe.yaml"
    path.write_text(text + extra)
    return path


def run_recipe(path: Path, out: Path, overrides: tuple[str, ...] = ()):
    """Run a recipe in-process; returns (RunResult, NullProgress)."""
    from mcomp.progress import NullProgress
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    progress = NullProgress()
    result = run_pipeline(load_recipe(str(path), overrides), RunOptions(out_dir=out), progress)
    return result, progress


def run_warnings(progress) -> list[str]:
    """The run's warnings less the machine-load note (other processes on a shared machine
    while latency was timed: a fact about the machine, not about what the test checks)."""
    return [w for w in progress.warnings if not w.startswith("latency: other processes used")]


def without_timings(report: dict) -> dict:
    """A copy of `report` without what differs between identical runs: timings and what
    follows from them (the end-of-run latency and speed-ups, the quantize stage's speed
    check, profile, advice and int8 verdict), where it was written, whether a stage was
    reused."""
    import json

    report = json.loads(json.dumps(report))
    for entry in [report["baseline"], *report["stages"]]:
        entry.pop("seconds")
        entry.pop("resumed", None)
        for key in ("latency_ms_b1", "latency_ms_batch", "latency", "speedup"):
            entry["metrics"].pop(key, None)
        for key in ("speed_check", "time_split", "speed_advice"):
            entry.get("details", {}).pop(key, None)
        _drop_seconds(entry.get("details", {}))  # a stage's own timings (search, rewrites)
        entry["notes"] = [
            n.split("; parity")[0]
            for n in entry.get("notes", [])
            if "its fp32 input at batch" not in n and "resume cache" not in n
        ]
    report.pop("latency", None)  # how the timing went: rounds, the machine's load
    report.pop("artifacts")
    report["final"] = report["final"]["metrics"]["metric"]
    report["constraints"] = [c for c in report["constraints"] if c["name"] != "min_speedup"]
    return report


def _drop_seconds(value) -> None:
    if isinstance(value, dict):
        value.pop("seconds", None)
        for item in value.values():
            _drop_seconds(item)
    elif isinstance(value, list):
        for item in value:
            _drop_seconds(item)
