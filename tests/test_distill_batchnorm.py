"""BatchNorm statistics while distilling a pretrained model: `batchnorm: auto` keeps the
running statistics the model came with (frozen), `train` re-estimates them from the train
batches. The bundled trained digits ResNet (BatchNorm after every convolution), pruned and
distilled on unlabelled digits, real training; its torch form saved as .pt2 is compared
with the pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_recipe

RECIPE = """\
version: 1
seed: 0
model: {{builtin: digits_resnet}}
data:
  train: {{builtin: digits, labels: null, samples: 128}}
  eval: {{builtin: digits, labels: null, samples: 64}}
runtime: {{latency: {{enabled: false}}}}
stages:
  - prune: {{sparsity: 0.5, reconstruct: false}}
  - distill: {{epochs: 1, batch_size: 32{extra}}}
output: {{torch_model: model.pt2, cache: false}}
"""


def _batchnorm_buffers(tmp_path: Path, extra: str) -> tuple[dict, dict]:
    """(pretrained, distilled) running means and variances of every BatchNorm."""
    import importlib.resources

    import torch

    # setup
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(extra=extra))
    # act
    result, _ = run_recipe(recipe, tmp_path / "out")
    assert result.ok
    # check (by the caller): the buffers before and after
    distilled = torch.export.load(str(tmp_path / "out" / "model.pt2")).state_dict
    weights = importlib.resources.files("mcomp.models").joinpath("digits_resnet.pt")
    with importlib.resources.as_file(weights) as path:
        pretrained = torch.load(path, weights_only=True, map_location="cpu")
    before = {k: v for k, v in pretrained.items() if "running_" in k}
    after = {k: distilled[k] for k in before if k in distilled}
    if len(after) < len(before):  # an exported program keeps buffers among its constants
        program = torch.export.load(str(tmp_path / "out" / "model.pt2"))
        after = {k: program.constants.get(k, distilled.get(k)) for k in before}
    assert len(after) == len(before) > 0
    return before, after


def test_distill_keeps_pretrained_batchnorm_statistics_by_default(tmp_path: Path) -> None:
    import torch

    before, after = _batchnorm_buffers(tmp_path, "")
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_distill_batchnorm_train_reestimates_them(tmp_path: Path) -> None:
    import torch

    before, after = _batchnorm_buffers(tmp_path, ", batchnorm: train")
    changed = [key for key, value in before.items() if not torch.allclose(value, after[key])]
    assert len(changed) == len(before)


@pytest.mark.parametrize("value", ["frozen", "train", "auto"])
def test_batchnorm_option_is_validated(value: str) -> None:
    from mcomp.compressors.distill import DistillOptions

    assert DistillOptions(batchnorm=value).batchnorm == value
    with pytest.raises(ValueError):
        DistillOptions(batchnorm="freeze")
