"""`prune.reconstruct` after channel pruning: each layer that lost input channels is refitted
by least squares to what the same layer of the unpruned model computed on unlabelled inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mcomp.compressors.prune.channel import prune_channels
from mcomp.compressors.prune.reconstruct import reconstruct_channels
from tests.helpers import run_recipe
from tests.test_prune_reconstruct import onnx_outputs, relative_error, smooth


class Branchy(nn.Module):
    """Conv-BN-ReLU layers, a concatenation of two of them, a grouped conv, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.n1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.n2 = nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(32, 16, 1)  # reads the concatenation of c1's and c2's channels
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        a = torch.relu(self.n1(self.c1(x)))
        b = torch.relu(self.n2(self.c2(a)))
        c = torch.relu(self.c3(torch.cat([a, b], 1)))
        return self.head(self.grouped(c).mean((2, 3)))


def branchy() -> nn.Module:
    torch.manual_seed(3)
    net = Branchy()
    for norm in (net.n1, net.n2):  # non-trivial running statistics, as a trained net has
        norm.running_mean.uniform_(-0.3, 0.3)
        norm.running_var.uniform_(0.5, 1.5)
    return net.eval()


def prune(net: nn.Module, ratio: float = 0.5) -> dict:
    kept: dict = {}
    prune_channels(
        net,
        (torch.zeros(1, 3, 8, 8),),
        ratio=ratio,
        target_macs_ratio=None,
        importance="l1",
        global_scope=False,
        ignored=[net.head],
        round_to=None,
        kept_rows=kept,
    )
    return {name: kept[m] for name, m in net.named_modules() if m in kept}


def test_the_kept_rows_name_the_dense_channels_each_pruned_layer_keeps():
    net = branchy()
    dense = copy.deepcopy(net)
    rows = prune(net)
    assert [len(rows[n]) for n in ("c1", "c2", "c3", "head")] == [8, 8, 8, 5]
    assert rows["head"] == list(range(5))  # the output layer keeps every output
    # c1 lost no inputs: its rows are the dense rows named, unchanged
    assert torch.equal(net.c1.weight, dense.c1.weight[rows["c1"]])
    assert torch.equal(net.n1.running_mean, dense.n1.running_mean[rows["c1"]])
    # c3 reads [c1's kept channels, 16 + c2's kept ones] of the concatenation
    columns = rows["c1"] + [16 + c for c in rows["c2"]]
    assert torch.equal(net.c3.weight, dense.c3.weight[rows["c3"]][:, columns])


def test_each_layer_that_lost_inputs_is_refitted_and_the_model_output_moves_back():
    net = branchy()
    dense = copy.deepcopy(net)
    rows = prune(net)
    x, held_out = smooth((96, 3, 8, 8), 0), smooth((64, 3, 8, 8), 1)
    with torch.no_grad():
        before = relative_error(net(held_out), dense(held_out))
    facts = reconstruct_channels(net, dense, rows, [(b,) for b in torch.split(x, 16)])
    assert list(facts["layers"]) == ["c2", "c3", "head"]  # forward order; c1 lost no inputs
    for name, layer in facts["layers"].items():
        assert layer["error_reconstructed"] < layer["error_pruned"], name
    assert facts["not_reconstructed"] == {"grouped": "grouped convolution"}
    assert facts["samples"] == 96
    with torch.no_grad():
        on_samples = relative_error(net(x), dense(x))
        after = relative_error(net(held_out), dense(held_out))
    # the head is the output: its reported error is the model's real output error
    assert on_samples == pytest.approx(facts["layers"]["head"]["error_reconstructed"], abs=1e-4)
    assert after < 0.7 * before, (before, after)


def test_a_layer_with_fewer_input_vectors_than_weights_keeps_its_pruned_weights():
    net = branchy()
    dense = copy.deepcopy(net)
    rows = prune(net)
    x = smooth((4, 3, 8, 8), 0)  # c2: 4 x 64 = 256 positions >= 73; the head: 4 < 9
    head = net.head.weight.detach().clone()
    facts = reconstruct_channels(net, dense, rows, [(x,)])
    assert facts["not_reconstructed"]["head"] == "4 input positions for 9 weights"
    assert torch.equal(net.head.weight, head)
    assert "c2" in facts["layers"]


RECIPE = """\
version: 1
seed: 0
model: {{path: net.pt, factory: "chmodels:net", python_path: ["."]}}
data:
  calibration: {{path: calibration.npz, labels: null}}
  eval: {{path: eval.npz, labels: null}}
task: regression
runtime: {{threads: 1, latency: {{enabled: false}}}}
stages:
  - prune: {{method: channel, sparsity: 0.5, reconstruct: {reconstruct}}}
  - export: {{}}
output: {{baseline: baseline.onnx}}
"""

FACTORY = """\
import torch
from torch import nn


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 4))
"""


def test_channel_pruning_refits_by_default_on_the_calibration_split(tmp_path):
    (tmp_path / "chmodels.py").write_text(FACTORY)
    namespace: dict = {}
    exec(FACTORY, namespace)
    torch.save(namespace["net"]().state_dict(), tmp_path / "net.pt")
    x = smooth((160, 1, 8, 8), 0).numpy()
    np.savez(tmp_path / "calibration.npz", x=x[:96])
    np.savez(tmp_path / "eval.npz", x=x[96:])
    errors, stages = {}, {}
    for choice in ("false", "auto"):
        recipe = tmp_path / f"{choice}.yaml"
        recipe.write_text(RECIPE.format(reconstruct=choice))
        result, _ = run_recipe(recipe, tmp_path / choice)
        stages[choice] = result.report["stages"][0]
        got = onnx_outputs(tmp_path / choice / "model.onnx", x[96:])
        want = onnx_outputs(tmp_path / choice / "baseline.onnx", x[96:])
        errors[choice] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    refit = stages["auto"]["details"]["reconstruct"]
    assert refit["split"] == "calibration" and refit["samples"] == 96
    assert list(refit["layers"]) == ["2", "4", "8"]  # the layers that lost inputs
    assert any(note.startswith("reconstructed 3 layers on 96 calibration inputs") for note in
               stages["auto"]["notes"])  # fmt: skip
    assert "reconstruct" not in stages["false"]["details"]
    # the same architecture (channels, MACs), a smaller error to the original on held-out inputs
    same = ("params", "macs")
    assert [stages["auto"]["metrics"][k] for k in same] == [
        stages["false"]["metrics"][k] for k in same
    ]
    assert errors["auto"] < 0.7 * errors["false"], errors
