"""Pruning importance that respects BatchNorm: a layer followed by BatchNorm is ranked on its
folded weights |w * gamma / sqrt(var + eps)| (`prune.fold_batchnorm`; `auto` folds for
channel pruning only), raw magnitudes on request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mcomp.compressors.prune.batchnorm import FoldedImportance, conv_bn_pairs, folded_magnitude
from mcomp.compressors.prune.magnitude import prune_magnitude
from tests.helpers import run_recipe

TESTS = Path(__file__).resolve().parent


def scaled_pair() -> nn.Sequential:
    """conv (2 output channels) -> BN: channel 0 has the larger raw weights, but its
    BatchNorm shrinks it 1000x, so the network computes channel 1 far more strongly."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, 1.0]).view(2, 1, 1, 1))
        net[1].weight.copy_(torch.tensor([0.001, 1.0]))
        net[1].running_var.fill_(1.0)
    return net.eval()


def test_pairs_are_found_through_custom_forward_code():
    sys.path.insert(0, str(TESTS))
    from prunable_models import residual_concat_net

    net = residual_concat_net()
    pairs = conv_bn_pairs(net, (torch.randn(2, 1, 8, 8),))
    names = {m: n for n, m in net.named_modules()}
    found = {names[layer]: names[norm] for layer, norm in pairs.items()}
    assert found == {
        "stem.0": "stem.1",
        "block.0": "block.1",
        "block.3": "block.4",
        "branch_b.0": "branch_b.1",
    }  # branch_a, branch_b.2 and the head feed no BatchNorm


def test_folded_magnitude_ranks_what_the_network_computes():
    net = scaled_pair()
    pairs = conv_bn_pairs(net, (torch.randn(2, 1, 2, 2),))
    assert pairs == {net[0]: net[1]}
    folded = folded_magnitude(net[0], pairs[net[0]]).flatten()
    assert folded[0] < folded[1]  # 2 * 0.001 vs 1 * 1
    # act: zero half the conv's weights, folded and raw
    masks = prune_magnitude([("0", net[0])], sparsity=0.5, scope="global", norms=pairs)
    # check: folded, the channel the BatchNorm silences goes first
    assert masks["0.weight"].flatten().tolist() == [False, True]
    raw = scaled_pair()
    masks = prune_magnitude([("0", raw[0])], sparsity=0.5, scope="global")
    assert masks["0.weight"].flatten().tolist() == [True, False]


def test_folded_channel_importance_restores_the_weights_exactly():
    import torch_pruning as tp

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, 0.01, 1.0, 1.0]))
    net.eval()
    example = (torch.randn(1, 1, 6, 6),)
    before = net[0].weight.detach().clone()
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=list(range(4)))
    importance = FoldedImportance(
        tp.importance.MagnitudeImportance(p=1), conv_bn_pairs(net, example)
    )
    scores = importance(group)
    assert torch.equal(net[0].weight, before)
    assert int(scores.argmin()) == 1  # the channel its BatchNorm scales by 0.01


@pytest.mark.parametrize("fold, folded_layers", [("true", ["0"]), ("false", []), ("auto", [])])
def test_prune_stage_reports_the_folded_layers(tmp_path, fold, folded_layers):
    (tmp_path / "bnmodels.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef net():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.Flatten(), nn.Linear(512, 10))\n"
    )
    namespace: dict = {}
    exec((tmp_path / "bnmodels.py").read_text(), namespace)
    torch.save(namespace["net"]().state_dict(), tmp_path / "net.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "version: 1\nseed: 0\n"
        'model: {path: net.pt, factory: "bnmodels:net", python_path: ["."]}\n'
        "data: {train: {builtin: digits, samples: 64}, eval: {builtin: digits, samples: 64}}\n"
        "runtime: {threads: 1, latency: {enabled: false}}\n"
        f"stages:\n  - prune: {{sparsity: 0.5, fold_batchnorm: {fold}}}\n"
    )
    result, _ = run_recipe(recipe, tmp_path / "out")
    details = result.report["stages"][0]["details"]
    assert details["bn_folded_layers"] == folded_layers
    assert result.report["stages"][0]["metrics"]["sparsity"] > 0.45
