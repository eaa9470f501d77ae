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
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )
        self.branch_a = nn.Conv2d(width, width, 1)
        self.branch_b = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width),
            nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 1),
        )
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


class RecurrentNet(nn.Module):
    """An 8x8 digit read row by row: Conv1d over the rows, a bidirectional LSTM or GRU, a
    Linear head on the last step (a CRNN in miniature)."""

    def __init__(self, cell: str = "LSTM", hidden: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, hidden, 3, padding=1)
        self.rnn = getattr(nn, cell)(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.relu(self.conv(x.flatten(1, 2).transpose(1, 2)))  # (N, hidden, 8 rows)
        steps, _ = self.rnn(rows.transpose(1, 2))
        return self.head(steps[:, -1])


def recurrent_net(cell: str = "LSTM") -> nn.Module:
    torch.manual_seed(0)
    return RecurrentNet(cell)
