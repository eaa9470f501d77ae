"""A small CNN for the 8x8 digits data set, used as mcomp's bundled example model."""

from __future__ import annotations

import torch
from torch import nn


def digits_cnn(num_classes: int = 10, width: int = 16) -> torch.nn.Module:
    """Build the digits CNN as a flat `nn.Sequential`.

    A flat Sequential (no custom module class) keeps the state_dict keys plain ("0.weight",
    "2.weight", ...) and lets pruning and quantization stages walk the layers in order.

    Args:
        num_classes: Number of output logits.
        width: Channels of the first convolution; the second has `2 * width`.

    Returns:
        The untrained model; it maps inputs of shape (N, 1, 8, 8) to logits (N, num_classes).
        At the defaults it has 38,282 parameters.
    """
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        # padding=1 keeps the maps at 8x8 and the pool halves them, so 4 * 4 = 16 positions.
        nn.Linear(2 * width * 16, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
