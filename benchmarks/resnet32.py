"""A small ResNet for 3x32x32 inputs and the digits task resized to 32x32 (benchmark only)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mcomp.models.digits_resnet import BasicBlock


def resnet32(width: int = 32, classes: int = 10) -> nn.Module:
    """ResNet-10-like: stem + 4 stages of one basic block (widths w, 2w, 4w, 8w)."""
    torch.manual_seed(0)
    layers, cin = [], width
    for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers.append(BasicBlock(cin, cout, 1 if stage == 0 else 2))
        cin = cout
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, classes),
    )


def digits32(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits, upsampled to 32x32 and repeated over 3 channels."""
    import importlib.resources

    with importlib.resources.as_file(
        importlib.resources.files("mcomp.data").joinpath("digits.npz")
    ) as path:
        arrays = np.load(path)
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    big = nn.functional.interpolate(
        torch.from_numpy(x), size=(32, 32), mode="bilinear", align_corners=False
    )
    return big.repeat(1, 3, 1, 1).numpy().astype(np.float32), y
