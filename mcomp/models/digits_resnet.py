"""A tiny ResNet for the 8x8 digits (BatchNorm, residual blocks): the bundled example for
structured and layer pruning, where coupled layers must be pruned together."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut projects when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def digits_resnet(width: int = 8, blocks: int = 2, num_classes: int = 10) -> nn.Module:
    """Stem, three stages of `blocks` basic blocks (widths w, 2w, 4w; 8x8 → 4x4 → 2x2),
    global average pooling and a linear classifier. Blocks `layers.1`, `layers.3`, `layers.5`
    keep their input's shape and can be dropped whole."""
    layers, cin = [], width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for index in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and index == 0 else 1))
            cin = cout
    model = nn.Sequential()
    model.add_module(
        "stem",
        nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()),
    )
    model.add_module("layers", nn.Sequential(*layers))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(cin, num_classes))
    return model
