"""Train the bundled digits models (the CNN and the tiny ResNet) and save their state_dicts.

Usage::

    python -m mcomp.models.train_digits_cnn [--model digits_cnn|digits_resnet] [--out PATH]
    python mcomp/models/train_digits_cnn.py [--model ...] [--out PATH] [--epochs N]

Training is deterministic on CPU: fixed seed, one thread, deterministic algorithms and a
seeded shuffle, so two runs write bit-identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    from .digits_cnn import digits_cnn
    from .digits_resnet import digits_resnet
except ImportError:  # run as a plain script; its own folder is on sys.path
    from digits_cnn import digits_cnn
    from digits_resnet import digits_resnet

MODELS = {"digits_cnn": digits_cnn, "digits_resnet": digits_resnet}

HERE = Path(__file__).resolve().parent
# mcomp.data and mcomp.models are sibling folders both in the repo and once installed.
DATA = HERE.parent / "data" / "digits.npz"


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Return the top-1 accuracy of `model` on `(x, y)`, in [0, 1]."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(
    name: str = "digits_cnn", epochs: int = 25, batch_size: int = 64, lr: float = 1e-3
) -> tuple[nn.Module, float]:
    """Train a fresh bundled model on the bundled train split.

    Args:
        name: Which model (a key of MODELS).
        epochs: Passes over the training set.
        batch_size: Mini-batch size.
        lr: Adam learning rate.

    Returns:
        The trained model and its accuracy on the eval split.
    """
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    data = np.load(DATA)
    x_tr, y_tr = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    x_ev, y_ev = torch.from_numpy(data["x_eval"]), torch.from_numpy(data["y_eval"])
    model = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    # A dedicated generator keeps the shuffle order independent of any other RNG use.
    gen = torch.Generator().manual_seed(0)
    acc = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(y_tr), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        acc = accuracy(model, x_ev, y_ev)
        print(
            f"epoch {epoch:2d}  loss {total / len(y_tr):.4f}  eval acc {acc:.4f}", file=sys.stderr
        )
    return model, acc


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, train and save the state_dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits_cnn")
    parser.add_argument(
        "--out", type=Path, help="where to save weights (default: MODEL.pt beside this file)"
    )
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, acc = train(args.model, epochs=args.epochs)
    out = args.out or HERE / f"{args.model}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f"saved {out} (eval acc {acc:.4f})", file=sys.stderr)


if __name__ == "__main__":
    main()
