"""Cheap input augmentation for recovery from a small train split (`augment:` of the training
options), every transform off by default:

    augment: {noise: 0.02, flip: horizontal, crop: 1}          # images (N, C, H, W)
    augment: {noise: 0.01, gain_db: 6, shift: 0.1}            # waveforms (N, T) / (N, C, T)
    augment: {token_dropout: 0.1, token_dropout_id: 103}      # token ids

One model input is augmented per batch, on the CPU, with a generator seeded from the recipe
seed (the same recipe gives the same report). The loop hands the augmented batch to both the
student and the loss, so a teacher sees the same augmented input and its target is computed on
the fly: with distillation, augmentation never mislabels. With labels and no teacher a
transform may make a label wrong (a flipped digit, a shifted onset), so augmenting then needs
the user's word (`labels_kept: true`). A transform must fit the input: image transforms need a
4-D float input, audio transforms a 2-D/3-D float waveform (time on the last axis), token
dropout integer ids; `check_augment` says so before any stage runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from mcomp.errors import StageError
from mcomp.stage import StageOptions

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mcomp.model.state import ModelState
    from mcomp.stage import StageContext

IMAGE = ("flip", "crop")
AUDIO = ("gain_db", "shift")


class AugmentOptions(StageOptions):
    """Per-batch input transforms for training; each is off unless given."""

    noise: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Float inputs: add Gaussian noise with this standard deviation relative "
        "to the batch's own (0.02: 2 %); 0: off.",
    )
    flip: Literal["horizontal", "vertical", "both"] | None = Field(
        None,
        description="Images (N, C, H, W): mirror each sample with probability 0.5 along the "
        "width (horizontal), the height (vertical) or each; null: off.",
    )
    crop: int = Field(
        0,
        ge=0,
        le=4096,
        description="Images: pad every side by this many pixels (edge values repeated) and "
        "crop back to the same size at a random offset; 0: off.",
    )
    gain_db: float = Field(
        0.0,
        ge=0,
        le=60,
        description="Waveforms (N, T) or (N, C, T): scale each sample by a random gain in "
        "[-gain_db, +gain_db] dB; 0: off.",
    )
    shift: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Waveforms: roll each sample in time by up to this fraction of its "
        "length (circular); 0: off.",
    )
    token_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Integer token ids: replace each id with `token_dropout_id` with this "
        "probability; 0: off.",
    )
    token_dropout_id: int | None = Field(
        None, description="The id that dropped tokens become (the [MASK] or pad id)."
    )
    input: str | None = Field(
        None, description="The model input to augment; default: the first input."
    )
    labels_kept: bool = Field(
        False,
        description="Declare that these transforms keep labels right: allows augment when a "
        "stage trains on labels without a teacher (with a teacher it is always allowed).",
    )

    @model_validator(mode="after")
    def _dropout_needs_an_id(self) -> AugmentOptions:
        if self.token_dropout > 0 and self.token_dropout_id is None:
            raise ValueError(
                "token_dropout needs `token_dropout_id` (the [MASK] or pad id of your tokenizer)"
            )
        return self

    def active(self) -> dict[str, float | int | str]:
        """The transforms that are on, by option name."""
        names = ("noise", "flip", "crop", "gain_db", "shift", "token_dropout")
        return {n: getattr(self, n) for n in names if getattr(self, n)}


def check_augment(
    options: AugmentOptions | None,
    state: ModelState,
    ctx: StageContext,
    key: str,
    *,
    teacher: bool,
) -> None:
    """Before any stage runs: each active transform fits the input it augments (shape and
    dtype of the train split), and without a teacher the user declared `labels_kept`."""
    if options is None or not options.active():
        return
    split = ctx.datasets.train
    if split is None:
        return  # the stage's own check says that training needs train inputs
    name = _input_name(options, state, key)
    array = split.inputs[name]
    for transform in options.active():
        problem = _misfit(transform, array, options)
        if problem:
            raise StageError(
                f"{key}.{transform}: {problem}; input {name!r} is {_describe(array)} "
                "(remove the transform, or pick another input with `augment.input`)"
            )
    if not teacher and not options.labels_kept:
        raise StageError(
            f"{key}: this stage trains on labels without a teacher, and a transform may make a "
            "label wrong; distil instead (the teacher sees the same augmented input), or "
            "declare `labels_kept: true` if these transforms keep your labels right"
        )


def _input_name(options: AugmentOptions, state: ModelState, key: str) -> str:
    names = [spec.name for spec in state.inputs]
    if options.input is None:
        return names[0]
    if options.input not in names:
        raise StageError(
            f"{key}.input: the model has no input {options.input!r}; its inputs are: "
            + ", ".join(names)
        )
    return options.input


def _misfit(transform: str, array: np.ndarray, options: AugmentOptions) -> str | None:
    """Why `transform` does not fit `array`, or None when it does."""
    import numpy as np

    floating = np.issubdtype(array.dtype, np.floating)
    if transform == "token_dropout":
        return None if np.issubdtype(array.dtype, np.integer) else "needs integer token ids"
    if not floating:
        return "needs a float input"
    if transform in IMAGE:
        if array.ndim != 4:
            return "image transforms need a 4-D float input (N, C, H, W)"
        if transform == "crop" and options.crop >= min(array.shape[2:]):
            return f"crop {options.crop} must be smaller than the image's height and width"
    if transform in AUDIO and array.ndim not in (2, 3):
        return "audio transforms need a 2-D (N, T) or 3-D (N, C, T) float waveform"
    return None


def _describe(array: np.ndarray) -> str:
    return "(N, " + ", ".join(str(d) for d in array.shape[1:]) + f") {array.dtype}"


def batch_augmenter(options: AugmentOptions | None, state: ModelState, ctx: StageContext):
    """A function `batch -> batch` applying the active transforms to one input, or None."""
    import torch

    if options is None or not options.active():
        return None
    position = [spec.name for spec in state.inputs].index(options.input or state.inputs[0].name)
    rank = 0 if ctx.dist is None else ctx.dist.rank
    # its own stream: the shuffle order is the same with and without augmentation
    generator = torch.Generator().manual_seed((ctx.seed + 1) * 1_000_003 + rank)

    def augment(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        batch = list(batch)
        batch[position] = augment_tensor(batch[position], options, generator)
        return batch

    return augment


def augment_tensor(
    x: torch.Tensor, options: AugmentOptions, generator: torch.Generator
) -> torch.Tensor:
    """`x` with every active transform applied (same shape and dtype)."""
    import torch

    if options.token_dropout:
        drop = torch.rand(x.shape, generator=generator) < options.token_dropout
        return x.masked_fill(drop, options.token_dropout_id)
    if options.flip:
        x = _flip(x, options.flip, generator)
    if options.crop:
        x = _crop(x, options.crop, generator)
    if options.gain_db:
        gain_db = (torch.rand(len(x), generator=generator) * 2 - 1) * options.gain_db
        x = x * (10 ** (gain_db / 20)).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    if options.shift:
        x = _shift(x, options.shift, generator)
    if options.noise:
        noise = torch.randn(x.shape, generator=generator).to(x.dtype)
        x = x + noise * (options.noise * x.std())
    return x


def _flip(x: torch.Tensor, how: str, generator) -> torch.Tensor:
    import torch

    for axis, name in ((3, "horizontal"), (2, "vertical")):
        if how in (name, "both"):
            chosen = (torch.rand(len(x), generator=generator) < 0.5).view(-1, 1, 1, 1)
            x = torch.where(chosen, x.flip(axis), x)
    return x


def _crop(x: torch.Tensor, pad: int, generator) -> torch.Tensor:
    """Random same-size crops of `x` padded by `pad` pixels (edges repeated), per sample."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    samples = torch.arange(n)[:, None, None]
    # advanced indices around a slice: the result is (N, H, W, C)
    return padded[samples, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def _shift(x: torch.Tensor, fraction: float, generator) -> torch.Tensor:
    """Each sample rolled in time (the last axis) by up to `fraction` of its length."""
    import torch

    length = x.shape[-1]
    most = int(fraction * length)
    offsets = torch.randint(-most, most + 1, (len(x),), generator=generator)
    index = (torch.arange(length)[None, :] - offsets[:, None]) % length  # (N, T)
    index = index.view(len(x), *[1] * (x.dim() - 2), length).expand_as(x)
    return torch.gather(x, -1, index)
