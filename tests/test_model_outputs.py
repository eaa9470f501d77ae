"""Models that return several outputs (a tuple, a Hugging Face style dict, a dataclass):
`model.output` picks the one metrics and the task loss read, torch and ONNX flatten them in
the same order, and such a model goes through prune, finetune, quantize and export."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mcomp.cli.main import cli
from tests.helpers import run_recipe, write_mlp_project

MODELS = """
import dataclasses

import torch
from torch import nn


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)


class DictNet(Body):
    # Hugging Face style: a dict whose `loss` is None without labels
    def forward(self, x):
        hidden = self.body(x)
        return {"loss": None, "hidden": hidden, "logits": self.head(hidden)}


class TwoOut(Body):
    def forward(self, x):
        hidden = self.body(x)
        return hidden, self.head(hidden)


@dataclasses.dataclass
class Output:
    embedding: torch.Tensor
    logits: torch.Tensor


class DataclassNet(Body):
    def forward(self, x):
        hidden = self.body(x)
        return Output(embedding=hidden, logits=self.head(hidden))


def dict_net():
    return DictNet()


class Pretrained:
    # Hugging Face style loading: `Class.from_pretrained(folder)` returns the loaded model
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path):
        import os

        model = DictNet()
        path = os.path.join(pretrained_model_name_or_path, "weights.pt")
        model.load_state_dict(torch.load(path, weights_only=True))
        return model


def two_out():
    return TwoOut()


def dataclass_net():
    return DataclassNet()
"""

RECIPE = """\
version: 1
seed: 0
model: {path: body.pt, factory: "outmodels:FACTORY", python_path: ["."], OUTPUT}
data: {train: train.npz, eval: eval.npz, batch_size: 64}
runtime: {threads: 1, latency: {enabled: false}}
stages:
STAGES"""
ALL_STAGES = (
    "  - prune: {sparsity: 0.5}\n"
    "  - finetune: {epochs: 2, lr: 0.003}\n"
    "  - quantize: {mode: dynamic}\n"
    "  - export: {}\n"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The MLP data and one trained body+head, saved as the state_dict every model loads."""
    import torch

    folder = tmp_path_factory.mktemp("outputs")
    write_mlp_project(folder)
    (folder / "outmodels.py").write_text(MODELS)
    namespace: dict = {}
    exec(MODELS, namespace)
    model = namespace["TwoOut"]()
    data = np.load(folder / "train.npz")
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x)[1], y).backward()
        optimizer.step()
    torch.save(model.state_dict(), folder / "body.pt")
    return folder


def write(folder: Path, factory: str, output: str | None, stages: str) -> Path:
    text = RECIPE.replace("FACTORY", factory).replace("STAGES", stages)
    text = text.replace(", OUTPUT", f", output: {output}" if output is not None else "")
    path = folder / f"{factory}.yaml"
    path.write_text(text)
    return path


def test_dict_output_model_goes_through_prune_finetune_quantize_export(project):
    result, _ = run_recipe(write(project, "dict_net", "logits", ALL_STAGES), project / "out_d")
    baseline, *stages = [result.report["baseline"], *result.report["stages"]]
    assert [s["name"] for s in stages] == ["prune", "finetune", "quantize", "export"]
    assert baseline["metrics"]["metric"] > 0.8  # accuracy read from `logits`
    assert stages[-1]["metrics"]["metric"] >= baseline["metrics"]["metric"] - 0.05
    written = onnx.load(str(project / "out_d" / "model.onnx"))
    # the outputs in the flattened order, named by key; the None loss left out
    assert [o.name for o in written.graph.output] == ["hidden", "logits"]


def test_dataclass_output_exports_in_field_order_and_runs_int8(project):
    stages = "  - quantize: {mode: dynamic}\n  - export: {}\n"
    result, _ = run_recipe(write(project, "dataclass_net", "logits", stages), project / "out_c")
    assert result.report["baseline"]["metrics"]["metric"] > 0.8
    assert result.report["stages"][-1]["metrics"]["metric"] > 0.8
    written = onnx.load(str(project / "out_c" / "model.onnx"))
    assert [o.name for o in written.graph.output] == ["embedding", "logits"]


@pytest.mark.parametrize("output", ["1", "-1"])
def test_output_index_picks_the_logits_of_a_tuple(project, output):
    stages = "  - finetune: {epochs: 1, lr: 0.001}\n  - export: {}\n"
    result, _ = run_recipe(write(project, "two_out", output, stages), project / "out_t")
    assert result.report["baseline"]["metrics"]["metric"] > 0.8
    assert result.report["stages"][-1]["metrics"]["metric"] > 0.8


def test_default_output_is_the_first(project):
    # the first output of TwoOut is the 32-wide hidden layer: its argmax is no class
    stages = "  - export: {}\n"
    result, _ = run_recipe(write(project, "two_out", None, stages), project / "out_f")
    assert result.report["baseline"]["metrics"]["metric"] < 0.6


def test_a_factory_alone_loads_the_model_from_a_folder_next_to_the_recipe(project):
    # setup: the weights in a folder, loaded by a dotted `Class.from_pretrained` factory
    import shutil

    (project / "my-model").mkdir(exist_ok=True)
    shutil.copy(project / "body.pt", project / "my-model" / "weights.pt")
    path = project / "pretrained.yaml"
    path.write_text(
        RECIPE.replace(
            'path: body.pt, factory: "outmodels:FACTORY", python_path: ["."], OUTPUT',
            'factory: "outmodels:Pretrained.from_pretrained", python_path: ["."], '
            "factory_args: {pretrained_model_name_or_path: my-model}, output: logits",
        ).replace("STAGES", "  - prune: {sparsity: 0.5}\n  - export: {}\n")
    )
    # act: from another working directory, so that the folder is found next to the recipe
    result, _ = run_recipe(path, project / "out_p")
    # check
    assert result.report["baseline"]["metrics"]["metric"] > 0.8
    assert result.report["stages"][-1]["metrics"]["metric"] > 0.7


def invoke(folder: Path, *args: str):
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(old)


def one_error(result, *texts: str) -> str:
    """The run failed with exit 2 and one line holding every text."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mcomp: error: ") and "unexpected" not in lines[0], lines[0]
    for text in texts:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize(
    "output, texts",
    [
        ("logit", ["model.output", "no output 'logit'", "did you mean 'logits'", "hidden"]),
        ("5", ["model.output", "index 5 is out of range", "2 output(s): hidden, logits"]),
    ],
)
def test_output_the_model_does_not_have_is_one_line_before_any_stage(project, output, texts):
    path = write(project, "dict_net", output, "  - finetune: {epochs: 1}\n")
    result = invoke(project, "run", str(path), "--out", str(project / "out_e"), "-q")
    one_error(result, *texts)
    assert not (project / "out_e" / "model.onnx").exists()


def test_eval_and_compare_read_the_output_named_by_output(project):
    runner = CliRunner()
    model = ["body.pt", "--factory", "outmodels:dict_net", "--python-path", "."]
    data = ["--data", "eval.npz", "--threads", "1", "--json"]
    cwd = os.getcwd()
    os.chdir(project)
    try:
        picked = runner.invoke(cli, ["eval", *model, *data, "--output", "logits"])
        by_index = runner.invoke(cli, ["eval", *model, *data, "--output", "1"])
        first = runner.invoke(cli, ["eval", *model, *data])
        typo = runner.invoke(cli, ["eval", *model, *data, "--output", "logit"])
        run_recipe(write(project, "dict_net", "logits", "  - export: {}\n"), project / "out_e")
        compared = runner.invoke(
            cli, ["compare", *model, "out_e/model.onnx", *data, "--output", "logits"]
        )
    finally:
        os.chdir(cwd)
    import json

    assert picked.exit_code == 0, picked.output
    scored = json.loads(picked.stdout)
    # the logits (4 classes) are scored with accuracy; the first output, the 32-wide hidden
    # layer, is not what the labels describe
    assert scored["metric_name"] == "accuracy" and scored["metric"] > 0.8
    assert json.loads(by_index.stdout)["metric"] == scored["metric"]
    assert first.exit_code != 0 or json.loads(first.stdout)["metric"] != scored["metric"]
    assert typo.exit_code == 2
    assert "--output" in typo.output and "did you mean 'logits'" in typo.output
    assert compared.exit_code == 0, compared.output
    result = json.loads(compared.stdout)
    assert result["figures"]["metric"]["a"] == pytest.approx(scored["metric"])
