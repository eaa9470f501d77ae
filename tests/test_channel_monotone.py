"""Global channel pruning is monotone in `sparsity`: more asked, never more parameters left,
on residual, depthwise and 1-D models; the achieved ratio is reported beside the requested
one, and a warning says when they differ by more than 0.05."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mcomp.compressors.prune.channel import prune_channels
from mcomp.compressors.select import layer_candidates
from mcomp.models.digits_resnet import digits_resnet
from tests.helpers import run_recipe

TESTS = Path(__file__).resolve().parent
RATIOS = [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]


def depthwise_net() -> nn.Module:
    """MobileNet-style: depthwise 3x3 + pointwise 1x1 blocks with BatchNorm."""
    torch.manual_seed(0)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin),
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        *block(16, 32),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def conv1d_net() -> nn.Module:
    """A 1-D signal network (the user's case of the issue: round_to 8)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, padding=2),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Conv1d(32, 64, 5, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Conv1d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def residual_concat() -> nn.Module:
    sys.path.insert(0, str(TESTS))
    from prunable_models import residual_concat_net

    return residual_concat_net()


MODELS = {
    "residual (digits_resnet)": (digits_resnet, (2, 1, 8, 8), None),
    "residual + concat + depthwise": (residual_concat, (2, 1, 8, 8), None),
    "depthwise separable": (depthwise_net, (2, 1, 8, 8), None),
    "1-D, round_to 8": (conv1d_net, (2, 1, 64), 8),
}


def params_after(make, shape, round_to, ratio: float) -> tuple[int, float]:
    module = make().eval()
    example = (torch.randn(*shape),)
    layers = [m for _, m in layer_candidates(module, ["Conv1d", "Conv2d", "Linear"])]
    details = prune_channels(
        module,
        example,
        ratio=ratio,
        target_macs_ratio=None,
        importance="l1",
        global_scope=True,
        ignored=layers[-1:],
        round_to=round_to,
    )
    assert module(*example).shape[-1] == 10  # still runs, outputs intact
    return details["params_after"], details["channel_ratio_achieved"]


@pytest.mark.parametrize("name", MODELS, ids=list(MODELS))
def test_parameters_never_grow_with_sparsity(name):
    make, shape, round_to = MODELS[name]
    results = [params_after(make, shape, round_to, ratio) for ratio in RATIOS]
    params = [p for p, _ in results]
    achieved = [a for _, a in results]
    assert all(a >= b for a, b in zip(params, params[1:], strict=False)), params
    assert params[0] > params[2] > params[4]  # and they really fall
    assert all(a <= b for a, b in zip(achieved, achieved[1:], strict=False)), achieved
    # up to half, what is asked is what is removed
    for ratio, got in zip(RATIOS[:3], achieved[:3], strict=False):
        assert abs(got - ratio) <= 0.06, (ratio, got)


def test_achieved_ratio_is_reported_and_a_shortfall_warned(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "version: 1\nseed: 0\nmodel: {builtin: digits_cnn}\n"
        "data: {train: {builtin: digits, samples: 64}, eval: {builtin: digits, samples: 64}}\n"
        "runtime: {threads: 1, latency: {enabled: false}}\n"
        "stages:\n  - prune: {method: channel, sparsity: 0.95}\n"
    )
    result, _ = run_recipe(recipe, tmp_path / "out")
    entry = result.report["stages"][0]
    assert entry["details"]["channel_ratio"] == 0.95
    achieved = entry["details"]["channel_ratio_achieved"]
    assert 0.8 < achieved < 0.9  # each layer keeps at least a tenth
    assert any(
        f"removed {achieved:.0%} of the prunable channels, not the 95%" in note
        for note in entry["notes"]
    ), entry["notes"]
