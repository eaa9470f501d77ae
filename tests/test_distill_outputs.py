"""Distillation of any output on unlabelled inputs: cosine for an embedding, bce for
probabilities, kl at every step of sequence logits, several outputs weighted, and the errors
for a loss that does not fit its output. Tiny real models, real training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mcomp.cli.main import cli
from tests.helpers import run_recipe

MODELS = """
import torch
from torch import nn


def embed():
    # a sentence-embedding stand-in: 16 features to a 32-wide embedding
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 96), nn.Tanh(), nn.Linear(96, 96), nn.Tanh(),
                         nn.Linear(96, 32))


class Vad(nn.Module):
    # frame probabilities of a 1-D signal: (batch, 1, 64) -> (batch, 64) in [0, 1]
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv1d(1, 24, 5, padding=2), nn.ReLU(),
                                 nn.Conv1d(24, 24, 5, padding=2), nn.ReLU(),
                                 nn.Conv1d(24, 1, 1))

    def forward(self, x):
        return torch.sigmoid(2.0 * self.net(x)[:, 0])


class Seq(nn.Module):
    # sequence logits (batch, steps, classes) of a recogniser, and a pooled embedding
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(),
                                  nn.Conv1d(32, 32, 5, padding=2), nn.ReLU())
        self.head = nn.Conv1d(32, 6, 1)

    def forward(self, x):
        features = self.conv(x)
        return {"logits": 3.0 * self.head(features).transpose(1, 2),
                "pooled": features.mean(dim=2)}


class Scalar(nn.Module):
    # one value per sample
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(16, 1)

    def forward(self, x):
        return self.net(x)[:, 0]


def vad():
    return Vad()


def seq():
    return Seq()


def scalar():
    return Scalar()
"""

RECIPE = """\
version: 1
seed: 0
task: TASK
model: {factory: "distmodels:FACTORY", path: FACTORY.pt, python_path: ["."]}
data: {DATA batch_size: 32}
runtime: {threads: 1, latency: {enabled: false}}
stages:
STAGES"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Unlabelled train (384) and eval (128) inputs for the dense and the 1-D models, and
    each model's weights."""
    import torch

    folder = tmp_path_factory.mktemp("distill_outputs")
    (folder / "distmodels.py").write_text(MODELS)
    namespace: dict = {}
    exec(MODELS, namespace)
    for name in ("embed", "vad", "seq", "scalar"):
        torch.save(namespace[name]().state_dict(), folder / f"{name}.pt")
    rng = np.random.default_rng(0)
    for name, count in (("train", 384), ("eval", 128)):
        np.savez(folder / f"{name}.npz", x=rng.normal(size=(count, 16)).astype(np.float32))
        signal = np.cumsum(rng.normal(size=(count, 1, 64)), axis=2) / 4
        np.savez(folder / f"{name}_1d.npz", x=signal.astype(np.float32))
    return folder


def write(folder: Path, factory: str, stages: str, *, task="regression", data=None) -> Path:
    suffix = "" if factory in ("embed", "scalar") else "_1d"
    data = data or (
        f"train: {{path: train{suffix}.npz, labels: null}}, "
        f"eval: {{path: eval{suffix}.npz, labels: null}},"
    )
    text = RECIPE.replace("FACTORY", factory).replace("TASK", task)
    path = folder / f"{factory}.yaml"
    path.write_text(text.replace("DATA", data).replace("STAGES", stages))
    return path


def recovered(report, figure: str) -> tuple[float, float, float]:
    """(baseline, after prune, after recovery) of a fidelity figure."""
    base, prune, recover = [report["baseline"], *report["stages"]]
    return tuple(entry["metrics"]["fidelity"][figure] for entry in (base, prune, recover))


def test_unlabelled_embedding_distilled_with_cosine_recovers_after_pruning(project):
    stages = (
        "  - prune: {sparsity: 0.8, reconstruct: false}\n"
        "  - distill: {loss: cosine, epochs: 6, lr: 0.003}\n"
    )
    result, _ = run_recipe(write(project, "embed", stages), project / "out_embed")
    full, pruned, distilled = recovered(result.report, "cosine")
    assert full == pytest.approx(1.0)
    assert pruned < 0.97  # pruning hurt the embedding
    # 80 % of what pruning lost comes back (the target), without a single label
    assert (distilled - pruned) / (full - pruned) >= 0.8, (pruned, distilled)
    details = result.report["stages"][1]["details"]
    assert details["outputs"] == [{"output": "0", "loss": "cosine", "weight": 1.0}]
    assert details["labels"] is False and details["alpha"] is None
    assert (
        result.report["stages"][1]["metrics"]["nonzero_params"]
        == (result.report["stages"][0]["metrics"]["nonzero_params"])
    )


def test_unlabelled_distillation_keeps_the_checkpoint_with_the_least_eval_loss(project):
    # without labels the checkpoint is chosen by the distillation loss on the eval split
    # (the objective), not by the coarse eval metric; the start is a candidate too
    stages = (
        "  - prune: {sparsity: 0.8, reconstruct: false}\n"
        "  - distill: {loss: cosine, epochs: 4, lr: 0.003}\n"
    )
    result, progress = run_recipe(write(project, "embed", stages), project / "out_ckpt")
    details = result.report["stages"][1]["details"]
    assert details["checkpoint_by"] == "eval_loss"
    losses = [details["start_eval_loss"], *details["eval_loss"]]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[details["best_epoch"]] == min(losses)  # best_epoch 0: the start
    assert details["best_epoch"] > 0 and min(details["eval_loss"]) < details["start_eval_loss"]
    assert any("eval loss" in line for line in progress.messages)


def test_finetune_without_labels_distils_from_the_original_and_says_so(project):
    stages = (
        "  - prune: {sparsity: 0.8, reconstruct: false}\n  - finetune: {epochs: 4, lr: 0.003}\n"
    )
    result, progress = run_recipe(write(project, "embed", stages), project / "out_ft")
    entry = result.report["stages"][1]
    assert "data.train has no labels: distilled from the original model" in entry["notes"]
    assert entry["details"]["teacher"] == "original model"
    assert entry["details"]["outputs"][0]["loss"] == "mse"  # auto for regression
    _, pruned, tuned = recovered(result.report, "mean_abs_diff")
    assert tuned < pruned


def test_bce_on_sigmoid_probabilities_recovers_the_frames(project):
    stages = (
        "  - prune: {sparsity: 0.8, reconstruct: false}\n"
        "  - distill: {loss: bce, epochs: 5, lr: 0.003}\n"
    )
    result, _ = run_recipe(write(project, "vad", stages), project / "out_vad")
    _, pruned, distilled = recovered(result.report, "mean_abs_diff")
    assert distilled < 0.7 * pruned, (pruned, distilled)


def test_kl_at_every_step_and_a_weighted_second_output(project):
    # the logits are (batch, steps, classes); `pooled` is matched too, with half the weight
    stages = (
        "  - prune: {sparsity: 0.8, reconstruct: false}\n"
        "  - distill: {epochs: 5, lr: 0.003, temperature: 2, outputs: [\n"
        "      {output: logits, loss: kl}, {output: pooled, loss: mse, weight: 0.5}]}\n"
    )
    path = write(project, "seq", stages, task="classification")
    path.write_text(
        path.read_text().replace('python_path: ["."]', 'python_path: ["."], output: logits')
    )
    result, _ = run_recipe(path, project / "out_seq")
    _, pruned, distilled = recovered(result.report, "top1_agreement")
    assert distilled > pruned + 0.05, (pruned, distilled)
    assert result.report["stages"][1]["details"]["outputs"] == [
        {"output": "logits", "loss": "kl", "weight": 1.0},
        {"output": "pooled", "loss": "mse", "weight": 0.5},
    ]


def invoke(folder: Path, *args: str):
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(old)


BAD = {
    "bce on values outside [0, 1]": (
        "embed",
        "  - distill: {loss: bce}\n",
        None,
        ["distill.loss: output '0' with loss bce", "ranges over", "use kl for logits or mse"],
    ),
    "kl on one value per sample": (
        "scalar",
        "  - distill: {outputs: [{output: 0, loss: kl}]}\n",
        None,
        ["distill.outputs[0]: output '0' with loss kl", "per-sample shape ()", "use mse"],
    ),
    "an output the model does not have": (
        "seq",
        "  - finetune: {distill: {outputs: [{output: pool, loss: mse}]}}\n",
        None,
        ["finetune.distill.outputs[0].output", "no output 'pool'", "did you mean 'pooled'"],
    ),
    "gradual pruning without train inputs": (
        "embed",
        "  - prune: {sparsity: 0.5, gradual: {}}\n",
        "eval: {path: eval.npz, labels: null},",
        ["prune.gradual: trains on inputs and the recipe gives none", "data.train"],
    ),
    "taylor importance without labels (gradual pruning would distil)": (
        "embed",
        "  - prune: {method: channel, sparsity: 0.5, importance: taylor, gradual: {}}\n",
        None,
        ["prune: importance 'taylor' needs labelled training batches", "l1/l2/bn_scale"],
    ),
    "an image transform on a 2-D input": (
        "embed",
        "  - prune: {sparsity: 0.5, gradual: {augment: {flip: horizontal}}}\n",
        None,
        [
            "prune.gradual.augment.flip: image transforms need a 4-D float input (N, C, H, W)",
            "input 'x' is (N, 16) float32",
        ],
    ),
    "no train inputs at all": (
        "embed",
        "  - distill: {loss: cosine}\n",
        "eval: {path: eval.npz, labels: null},",
        ["distill: distillation trains on inputs and the recipe gives none", "data.train"],
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_loss_that_does_not_fit_is_one_line_before_any_stage(project, case):
    factory, stages, data, texts = BAD[case]
    path = write(project, factory, stages, data=data)
    result = invoke(project, "run", str(path), "--out", str(project / "out_bad"), "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mcomp: error: ") and "unexpected" not in lines[0], lines[0]
    for text in texts:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert not (project / "out_bad" / "model.onnx").exists()


@pytest.mark.parametrize("sources", [["calibration"], ["calibration", "eval"]])
def test_train_from_calibration_and_eval_inputs_is_an_opt_in_the_report_names(project, sources):
    data = (
        "calibration: {path: train.npz, labels: null}, eval: {path: eval.npz, labels: null}, "
        f"train_from: [{', '.join(sources)}],"
    )
    stages = (
        "  - prune: {sparsity: 0.8, reconstruct: false}\n  - finetune: {epochs: 3, lr: 0.003}\n"
    )
    result, _ = run_recipe(write(project, "embed", stages, data=data), project / "out_from")
    notes = result.report["stages"][1]["notes"]
    assert f"trained on the inputs of data.{', data.'.join(sources)} (train_from)" in notes
    optimistic = "the eval figures are optimistic: the model was trained on its inputs"
    assert (optimistic in notes) == ("eval" in sources)
    _, pruned, tuned = recovered(result.report, "mean_abs_diff")
    assert tuned < pruned


@pytest.mark.parametrize(
    "data, text",
    [
        (
            "train: train.npz, eval: eval.npz, train_from: [eval],",
            "give `train` or `train_from`, not both",
        ),
        ("eval: eval.npz, train_from: [calibration],", "needs `calibration`"),
    ],
)
def test_train_from_mistakes_fail_validate(project, data, text):
    path = write(project, "embed", "  - finetune: {}\n", data=data)
    result = invoke(project, "validate", str(path))
    assert result.exit_code == 2, result.output
    assert text in result.stderr and "data" in result.stderr
