"""Small models whose layers are coupled: residual additions, BatchNorm, concatenation and a
depthwise convolution — the cases where hand-made structured pruning breaks."""

from __future__ import annotations

import torch
from torch import nn


class ResidualConcatNet(nn.Module):
    """
    x ─ stem ─┬─ conv-bn-relu ─ conv-bn ─(+)─ relu ─┬─ conv1x1 ────────────┐
              └─────────── identity ────────┘          └─ dwconv-bn ─ conv1x1 ─ concat ─ pool ─ fc
    """

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                                   nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                   nn.BatchNorm2d(width))
        self.branch_a = nn.Conv2d(width, width, 1)
        self.branch_b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width),
                                      nn.BatchNorm2d(width), nn.Conv2d(width, width, 1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def residual_concat_net(width: int = 16, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    net = ResidualConcatNet(width, classes)
    # Freshly built BatchNorm layers all have scale 1 (every channel ties under BN-scale
    # importance); give them the spread a trained network has.
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.1, 1.0)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    return net


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A small ResNet: stem, three stages of basic blocks, global pooling, classifier."""

    def __init__(self, in_channels: int = 1, width: int = 16, blocks: int = 2,
                 classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnet(in_channels: int = 1, width: int = 8, blocks: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet(in_channels, width, blocks)


class Wrapped(nn.Module):
    """Stands for a DistributedDataParallel / torch.compile wrapper: names start `module.`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def wrapped_mlp() -> nn.Module:
    torch.manual_seed(0)
    return Wrapped(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
