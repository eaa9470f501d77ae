"""Gradual (AGP) pruning with distillation in one loop: unlabelled data distils from the
original model by default, labels mix in through alpha, any output with its loss, channel
pruning with a teacher, and the check-time error without train inputs. Tiny real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mcomp.errors import StageError
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project

DIGITS = """\
version: 1
seed: 0
model: {builtin: digits_cnn}
data: {train: {builtin: digits, labels: null, samples: 256}, eval: {builtin: digits, samples: 120}}
runtime: {threads: 1, latency: {enabled: false}}
stages:
  - prune: %s
"""
CNN_WEIGHTS = 1 * 16 * 9 + 16 * 32 * 9 + 512 * 64 + 64 * 10  # its conv and linear weights
DEFAULT_NOTE = "data.train has no labels: distilled from the original model"


def digits(folder: Path, prune: str) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(DIGITS % prune)
    return path


def test_unlabelled_gradual_prune_distils_to_target_and_beats_one_shot(tmp_path):
    # setup: the digits CNN, 256 unlabelled train images; one-shot is plain magnitude pruning
    # (with the default refit, prune.reconstruct, one-shot 80 % alone agreed 1.000 here)
    gradual = "{sparsity: 0.8, gradual: {steps: 4, epochs: 3, lr: 0.003}}"
    # act
    result, progress = run_recipe(digits(tmp_path, gradual), tmp_path / "gradual")
    one_shot, _ = run_recipe(
        digits(tmp_path, "{sparsity: 0.8, reconstruct: false}"), tmp_path / "once"
    )
    # check: distilled from the original model by default, and said so
    entry = result.report["stages"][0]
    assert DEFAULT_NOTE in entry["notes"]
    assert any(DEFAULT_NOTE in m and "prune.gradual.distill" in m for m in progress.messages)
    distill = entry["details"]["distill"]
    assert distill["teacher"] == "original model" and distill["labels"] is False
    assert distill["outputs"] == [{"output": "0", "loss": "kl", "weight": 1.0}]
    # the schedule ran inside the distillation loop and ended at the target
    schedule = entry["details"]["schedule"]
    assert schedule == sorted(schedule) and schedule[-1] == pytest.approx(0.8, abs=1e-4)
    assert entry["details"]["pruned_weights"] == pytest.approx(0.8 * CNN_WEIGHTS, abs=2)
    metrics = entry["metrics"]
    assert metrics["params"] - metrics["nonzero_params"] >= 0.8 * CNN_WEIGHTS - 2  # real zeros
    agreement = entry["metrics"]["fidelity"]["top1_agreement"]
    once = one_shot.report["stages"][0]["metrics"]["fidelity"]["top1_agreement"]
    assert agreement > once + 0.02, (agreement, once)


def test_channel_gradual_prune_distils_with_a_hint_across_structural_changes(tmp_path):
    # setup: conv '2' loses half its channels step by step; its hint needs a projection
    gradual = (
        "{method: channel, sparsity: 0.5, gradual: {steps: 2, epochs: 3, lr: 0.003, "
        "distill: {hints: [{student: '2', teacher: '2', weight: 0.1}]}}}"
    )
    # act
    result, _ = run_recipe(digits(tmp_path, gradual), tmp_path / "gradual")
    one_shot, _ = run_recipe(
        digits(tmp_path, "{method: channel, sparsity: 0.5, reconstruct: false}"), tmp_path / "once"
    )
    # check
    entry = result.report["stages"][0]
    details = entry["details"]
    assert details["distill"]["teacher"] == "original model"
    assert details["distill"]["hint_projections"] == ["Conv2d"]  # 16 student, 32 teacher
    assert DEFAULT_NOTE not in entry["notes"]  # distill: given, nothing was defaulted
    assert details["schedule"][-1] == pytest.approx(0.5) and len(details["train_loss"]) == 3
    assert details["macs_after"] < 0.6 * details["macs_before"]
    agreement = entry["metrics"]["fidelity"]["top1_agreement"]
    once = one_shot.report["stages"][0]["metrics"]["fidelity"]["top1_agreement"]
    assert agreement > once + 0.02, (agreement, once)


def mlp_gradual(folder: Path, gradual: str) -> Path:
    return mlp_recipe(folder, f"  - prune: {{sparsity: 0.85, gradual: {gradual}}}\n")


def test_labels_and_distill_alpha_mix_the_task_loss(tmp_path):
    # setup: the labelled MLP project
    write_mlp_project(tmp_path)
    plain = "{steps: 2, epochs: 2, lr: 0.01}"
    # act
    labels, _ = run_recipe(mlp_gradual(tmp_path, plain), tmp_path / "labels")
    zero, _ = run_recipe(
        mlp_gradual(tmp_path, "{steps: 2, epochs: 2, lr: 0.01, distill: {alpha: 0.0}}"),
        tmp_path / "alpha0",
    )
    half, _ = run_recipe(
        mlp_gradual(tmp_path, "{steps: 2, epochs: 2, lr: 0.01, distill: {alpha: 0.5}}"),
        tmp_path / "alpha05",
    )
    # check: alpha 0 is the task loss alone (the teacher runs but weighs nothing)
    by_labels = labels.report["stages"][0]["details"]
    assert "distill" not in by_labels
    alpha0 = zero.report["stages"][0]["details"]
    assert alpha0["train_loss"] == pytest.approx(by_labels["train_loss"], rel=1e-6)
    mixed = half.report["stages"][0]["details"]
    assert mixed["distill"]["alpha"] == 0.5 and mixed["distill"]["labels"] is True
    assert mixed["train_loss"] != pytest.approx(by_labels["train_loss"], rel=1e-3)
    weights = 16 * 32 + 32 * 32 + 32 * 4
    assert mixed["pruned_weights"] == pytest.approx(0.85 * weights, abs=3)
    assert half.report["stages"][0]["metrics"]["metric"] > 0.8  # accuracy of 4 classes


EMBED = """
import torch
from torch import nn


def embed():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 96), nn.Tanh(), nn.Linear(96, 96), nn.Tanh(),
                         nn.Linear(96, 32))
"""
EMBED_RECIPE = """\
version: 1
seed: 0
task: regression
model: {factory: "embedmodel:embed", path: embed.pt, python_path: ["."]}
data: {train: {path: train.npz, labels: null}, eval: {path: eval.npz, labels: null}}
runtime: {threads: 1, latency: {enabled: false}}
stages:
  - prune: %s
"""


def test_embedding_output_gradual_prune_with_cosine(tmp_path):
    # setup: an unlabelled 32-wide embedding
    (tmp_path / "embedmodel.py").write_text(EMBED)
    namespace: dict = {}
    exec(EMBED, namespace)
    torch.save(namespace["embed"]().state_dict(), tmp_path / "embed.pt")
    rng = np.random.default_rng(0)
    for name, count in (("train", 384), ("eval", 128)):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(count, 16)).astype(np.float32))
    recipe = tmp_path / "recipe.yaml"
    # act
    recipe.write_text(
        EMBED_RECIPE
        % "{sparsity: 0.8, gradual: {steps: 4, epochs: 6, lr: 0.003, distill: {loss: cosine}}}"
    )
    result, _ = run_recipe(recipe, tmp_path / "gradual")
    recipe.write_text(EMBED_RECIPE % "{sparsity: 0.8}")
    one_shot, _ = run_recipe(recipe, tmp_path / "once")
    # check
    entry = result.report["stages"][0]
    assert entry["details"]["distill"]["outputs"] == [
        {"output": "0", "loss": "cosine", "weight": 1.0}
    ]
    cosine = entry["metrics"]["fidelity"]["cosine"]
    once = one_shot.report["stages"][0]["metrics"]["fidelity"]["cosine"]
    assert cosine > once + 0.05 and cosine > 0.95, (cosine, once)


def test_gradual_without_train_inputs_is_a_check_time_error(tmp_path):
    write_mlp_project(tmp_path)
    recipe = mlp_gradual(tmp_path, "{steps: 2, epochs: 2}")
    recipe.write_text(recipe.read_text().replace("train: train.npz, ", ""))
    with pytest.raises(StageError) as caught:
        run_recipe(recipe, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("prune.gradual: trains on inputs and the recipe gives none")
    assert "add `data.train`" in message and "data.train_from: [calibration]" in message
    assert not (tmp_path / "out" / "model.onnx").exists()  # nothing ran
