"""Distillation (`distill` stage and `finetune: {distill:}`) on tiny real models and data."""

from __future__ import annotations

import numpy as np
import pytest

from mcomp.errors import StageError
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project

DIGITS = """\
version: 1
seed: 0
model: {builtin: digits_cnn}
data: {train: digits, eval: {builtin: digits, samples: 120}}
runtime: {threads: 1, latency: {enabled: false}}
stages:
%s"""
STUDENT = (
    "{factory: 'mcomp.models.digits_cnn:digits_cnn', factory_args: %s, init_from_teacher: true}"
)


@pytest.fixture
def project(tmp_path):
    write_mlp_project(tmp_path)
    return tmp_path


def digits_recipe(folder, stages: str):
    path = folder / "recipe.yaml"
    path.write_text(DIGITS % stages)
    return path


def test_kd_loss_matches_a_hand_computed_reference():
    import torch

    from mcomp.training.distillation import kd_loss

    student = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    teacher = np.array([[1.5, 1.0, -0.5], [-1.0, 0.5, 2.0]])
    labels = np.array([0, 2])
    t, alpha = 2.0, 0.7

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_s, p_t = softmax(student / t), softmax(teacher / t)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    ce = -np.mean(np.log(softmax(student)[np.arange(2), labels]))
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = kd_loss(
        torch.tensor(student),
        torch.tensor(teacher),
        torch.tensor(labels),
        temperature=t,
        alpha=alpha,
    )
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # no labels: the distillation term alone
    assert float(
        kd_loss(torch.tensor(student), torch.tensor(teacher), None, temperature=t, alpha=alpha)
    ) == pytest.approx(t * t * kl, rel=1e-9)


def test_half_width_student_gets_matching_teacher_weights_and_learns(tmp_path):
    # setup: a width-8 digits CNN distilled from the width-16 original, with a conv hint
    stages = (
        f"  - distill: {{student: {STUDENT % '{width: 8}'}, epochs: 3, lr: 0.003,\n"
        "               hints: [{student: '2', teacher: '2', weight: 0.1}]}\n"
    )
    # act
    result, _ = run_recipe(digits_recipe(tmp_path, stages), tmp_path / "out")
    # check
    entry = result.report["stages"][0]
    init = entry["details"]["student"]["init_from_teacher"]
    # only the layers whose shapes do not depend on the width match
    assert init["copied"] == ["6.bias", "8.weight", "8.bias"]
    assert {"0.weight", "2.weight", "6.weight"} <= set(init["shape_mismatch"])
    assert entry["details"]["hint_projections"] == ["Conv2d"]  # 16 -> 32 channels
    base = result.report["baseline"]["metrics"]
    assert entry["metrics"]["params"] == 18346 < base["params"]
    assert entry["metrics"]["macs"] < base["macs"]
    assert len(entry["details"]["train_loss"]) == 3
    assert entry["metrics"]["metric"] > 0.7


def test_hint_layer_typo_fails_before_training_with_did_you_mean(project):
    recipe = mlp_recipe(
        project, "  - distill: {epochs: 1, hints: [{student: '22', teacher: '2'}]}\n"
    )
    with pytest.raises(StageError, match=r"hints\[0\]\.student: no layer '22'.*did you mean '2'"):
        run_recipe(recipe, project / "out")


def test_student_with_other_output_shape_is_an_error_naming_both(tmp_path):
    stages = f"  - distill: {{student: {STUDENT % '{num_classes: 5}'}}}\n"
    with pytest.raises(StageError, match=r"shape \(5,\), the teacher's \(10,\)"):
        run_recipe(digits_recipe(tmp_path, stages), tmp_path / "out")


def test_regression_task_distils_with_mse_by_default(project):
    # the MLP's 4 outputs regressed on one-hot targets: `loss: auto` is mse for regression
    for name in ("train", "eval"):
        data = np.load(project / f"{name}.npz")
        targets = np.eye(4, dtype=np.float32)[data["y"]]
        np.savez(project / f"{name}_reg.npz", x=data["x"], y=targets)
    recipe = mlp_recipe(
        project,
        "  - prune: {sparsity: 0.7}\n  - finetune: {epochs: 2, lr: 0.003, distill: {}}\n",
        extra="task: regression\n",
    )
    recipe.write_text(recipe.read_text().replace(".npz", "_reg.npz"))
    result, _ = run_recipe(recipe, project / "out")
    finetune = result.report["stages"][1]["details"]
    assert finetune["outputs"] == [{"output": "0", "loss": "mse", "weight": 1.0}]
    assert finetune["train_loss"][-1] < finetune["train_loss"][0]


def test_finetune_distill_from_a_teacher_file_keeps_pruned_zeros(project):
    # setup: the teacher is the same trained MLP, named as a file relative to the recipe
    teacher = "{path: mlp.pt, factory: 'tinymodels:mlp', python_path: ['.']}"
    recipe = mlp_recipe(
        project,
        "  - prune: {sparsity: 0.8}\n"
        f"  - finetune: {{epochs: 2, lr: 0.01, distill: {{teacher: "
        f"{teacher}, alpha: 0.5, temperature: 2}}}}\n",
    )
    # act
    result, _ = run_recipe(recipe, project / "out")
    # check
    prune, finetune = result.report["stages"]
    assert finetune["details"]["teacher"] == "mlp.pt"
    assert finetune["details"]["masked_tensors"] == 3
    assert finetune["metrics"]["nonzero_params"] == prune["metrics"]["nonzero_params"]
    assert finetune["metrics"]["metric"] >= prune["metrics"]["metric"] - 0.02


def test_missing_teacher_file_is_named_as_the_teachers(project):
    recipe = mlp_recipe(project, "  - distill: {teacher: {path: nope.pt}}\n")
    with pytest.raises(StageError, match=r"distill\.teacher: .*file not found: .*nope\.pt"):
        run_recipe(recipe, project / "out")


def test_teacher_is_in_eval_mode_and_frozen():
    # setup: an original model with BatchNorm left in training mode
    from types import SimpleNamespace

    import torch

    from mcomp.model.state import ModelState
    from mcomp.training.distillation import DistillSettings, load_teacher

    module = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    ).train()
    ctx = SimpleNamespace(original=ModelState.from_torch(module, []))
    # act
    teacher = load_teacher(DistillSettings(), ctx, "distill")
    # check: running statistics cannot move and no gradient can reach it
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    before = teacher[1].running_mean.clone()
    teacher(torch.randn(16, 4) + 5.0)
    assert torch.equal(teacher[1].running_mean, before)
