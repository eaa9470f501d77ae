"""Input augmentation for recovery (`augment:` of the training options): each transform does
what it declares and keeps shape and dtype, runs are deterministic from the recipe seed, and a
transform that does not fit the input (or labels without a teacher) fails at check time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcomp.errors import StageError
from mcomp.training.augment import AugmentOptions, augment_tensor
from tests.helpers import mlp_recipe, run_recipe, without_timings, write_mlp_project


def apply(x: torch.Tensor, **options) -> torch.Tensor:
    y = augment_tensor(x, AugmentOptions(**options), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    return y


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(64, 3, 8, 10, generator=torch.Generator().manual_seed(1))


def test_noise_is_relative_to_the_batch_spread(images):
    scaled = 5 * images
    y = apply(scaled, noise=0.1)
    assert bool((y != scaled).all())
    assert float((y - scaled).std()) == pytest.approx(0.1 * float(scaled.std()), rel=0.05)


@pytest.mark.parametrize("how, axis", [("horizontal", 3), ("vertical", 2)])
def test_flip_mirrors_about_half_of_the_samples(images, how, axis):
    y = apply(images, flip=how)
    same = [torch.equal(a, b) for a, b in zip(y, images, strict=True)]
    mirrored = [torch.equal(a, b.flip(axis - 1)) for a, b in zip(y, images, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 16 <= sum(mirrored) <= 48


def test_crop_takes_a_same_size_window_of_the_padded_image(images):
    y = apply(images, crop=2)
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    offsets = []
    for sample, source in zip(y, padded, strict=True):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(sample, source[:, dy : dy + 8, dx : dx + 10])
        ]
        assert found
        offsets.append(found[0])
    assert len(set(offsets)) > 10  # per-sample offsets, not one for the batch


@pytest.mark.parametrize("shape", [(32, 200), (32, 2, 200)])
def test_gain_scales_each_waveform_within_the_declared_range(shape):
    wave = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    y = apply(wave, gain_db=6)
    ratio = (y / wave).reshape(len(wave), -1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)  # one gain a sample
    gains = 20 * torch.log10(ratio[:, 0])
    assert bool((gains.abs() <= 6 + 1e-4).all()) and float(gains.std()) > 1


@pytest.mark.parametrize("shape", [(32, 100), (32, 2, 100)])
def test_shift_rolls_each_waveform_in_time(shape):
    wave = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    y = apply(wave, shift=0.1)
    rolls = []
    for sample, source in zip(y, wave, strict=True):
        found = [r for r in range(-10, 11) if torch.equal(sample, source.roll(r, dims=-1))]
        assert found
        rolls.append(found[0])
    assert len(set(rolls)) > 5


def test_token_dropout_replaces_ids_with_the_declared_id():
    ids = torch.randint(5, 1000, (64, 32), generator=torch.Generator().manual_seed(4))
    y = apply(ids, token_dropout=0.2, token_dropout_id=3)
    dropped = y != ids
    assert bool((y[dropped] == 3).all())
    assert float(dropped.float().mean()) == pytest.approx(0.2, abs=0.03)


DIGITS = """\
version: 1
seed: %d
model: {builtin: digits_cnn}
data: {train: {builtin: digits, labels: null, samples: 128}, eval: {builtin: digits, samples: 60}}
runtime: {threads: 1, latency: {enabled: false}}
stages:
  - prune: {sparsity: 0.7}
  - finetune: {epochs: 2, lr: 0.003%s}
"""


def digits(folder, augment: str = "", seed: int = 0):
    path = folder / "recipe.yaml"
    path.write_text(DIGITS % (seed, augment))
    return path


def test_augmented_distillation_is_deterministic_from_the_seed(tmp_path):
    # setup: an unlabelled train split: finetune distils, the teacher sees the same inputs
    augment = ", augment: {noise: 0.05, crop: 1, flip: horizontal}"
    # act
    first, _ = run_recipe(digits(tmp_path, augment), tmp_path / "a")
    again, _ = run_recipe(digits(tmp_path, augment), tmp_path / "b")
    plain, _ = run_recipe(digits(tmp_path), tmp_path / "c")
    reseeded, _ = run_recipe(digits(tmp_path, augment, seed=1), tmp_path / "d")
    # check
    assert without_timings(first.report) == without_timings(again.report)
    details = first.report["stages"][1]["details"]
    assert details["augment"] == {"noise": 0.05, "crop": 1, "flip": "horizontal"}
    assert "augment" not in plain.report["stages"][1]["details"]
    losses = details["train_loss"]
    assert losses != plain.report["stages"][1]["details"]["train_loss"]  # inputs did change
    assert losses != reseeded.report["stages"][1]["details"]["train_loss"]


@pytest.mark.parametrize(
    "augment, text",
    [
        (
            "{crop: 2}",
            "finetune.augment.crop: image transforms need a 4-D float input (N, C, H, W); "
            "input 'x' is (N, 16) float32",
        ),
        (
            "{token_dropout: 0.1, token_dropout_id: 0}",
            "finetune.augment.token_dropout: needs integer token ids; input 'x' is (N, 16)",
        ),
        ("{noise: 0.1, input: y}", "finetune.augment.input: the model has no input 'y'"),
        ("{noise: 0.1}", "finetune.augment: this stage trains on labels without a teacher"),
    ],
)
def test_a_transform_that_does_not_fit_is_a_check_time_error(tmp_path, augment, text):
    # the labelled MLP: (N, 16) float32 inputs, finetune trains on labels without a teacher
    write_mlp_project(tmp_path)
    recipe = mlp_recipe(tmp_path, f"  - finetune: {{epochs: 1, augment: {augment}}}\n")
    with pytest.raises(StageError) as caught:
        run_recipe(recipe, tmp_path / "out")
    assert text in str(caught.value)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_labels_without_a_teacher_train_augmented_when_declared(tmp_path):
    write_mlp_project(tmp_path)
    stages = "  - finetune: {epochs: 1, augment: {noise: 0.05, labels_kept: true}}\n"
    result, _ = run_recipe(mlp_recipe(tmp_path, stages), tmp_path / "out")
    details = result.report["stages"][0]["details"]
    assert details["augment"] == {"noise": 0.05}
    assert np.isfinite(details["train_loss"][0])


def test_an_audio_transform_on_images_names_the_shape(tmp_path):
    recipe = digits(tmp_path, ", augment: {gain_db: 3}")
    with pytest.raises(StageError) as caught:
        run_recipe(recipe, tmp_path / "out")
    assert str(caught.value).startswith(
        "finetune.augment.gain_db: audio transforms need a 2-D (N, T) or 3-D (N, C, T) float "
        "waveform; input 'x' is (N, 1, 8, 8) float32"
    )
