"""The recipes recover.py runs: per model, what is pruned, how it is distilled, on what inputs.

Each target is one entry of models.MODELS (its file, factory, fidelity function) with the
stages a user would write for issue 16's targets and nothing tuned per run:

- `easyocr_rec`: `prune: {sparsity: 0.5, reconstruct: false}` (magnitude, global over the
  Conv/Linear weights; the plain row), then in the chain the same mask with `reconstruct:
  true` (the kept weights refitted by least squares on the calibration inputs: its own row)
  and `distill` with `kl` over the (batch, steps, classes) CTC logits;
- `craft` at 160x160 (inputs.py: half of run.py's 224 pixels, so training fits minutes):
  `prune: {method: channel, target_macs_ratio: 0.6, reconstruct: false}` (the plain row),
  then in the chain the same pruning with `reconstruct: true` (each layer that lost input
  channels refitted to the unpruned model's layer outputs: its own row) and `distill` with
  `mse` on the region and affinity maps.

Both then `quantize: {mode: auto}` and `export`. The recipes' `data.eval` is the val split
(checkpoint choice and mcomp's own figures), never the evaluation split recover.py scores.
The recogniser's val split is 128 lines. The checkpoint (the model as it came in included)
is chosen by the distillation loss on it, as mcomp does without labels: by the eval metric
(top-1 step agreement with the original) the distilled model read 0.964 against the pruned
one's 0.971 while the 256 evaluation lines read it better (decode agreement 0.711 -> 0.727,
KL 0.195 -> 0.162).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import models
import variants


@dataclass(frozen=True)
class Target:
    name: str
    model: models.RealModel
    builder: str  # inputs.BUILDERS key (may differ from the int8 benchmark's size)
    shape: tuple[int, ...]
    prune: str  # the prune stage's YAML
    distill: str  # the distill stage's YAML, with {epochs}
    epochs: int
    primary: str  # the fidelity figure the recovered share is computed on first
    figures: tuple[str, ...]  # the figures whose recovered share is reported
    counts: dict[str, int] = field(default_factory=dict)  # split -> samples
    quick_counts: dict[str, int] = field(default_factory=dict)
    macs_target: float | None = None  # channel pruning: MACs ratio asked for
    latency_target: float | None = None  # fp32 / pruned+distilled at batch 1, at least

    # the chain's prune stage when it differs from the plain one (the plain one stays the
    # baseline of the recovered share); its `prune -> export` alone is a row of its own
    chain_prune: str | None = None

    def prune_stages(self, args) -> list[str]:
        return [f"prune: {self.prune}"]

    def chain_stages(self, args) -> list[str]:
        epochs = 1 if args.quick else self.epochs
        return [f"prune: {self.chain_prune or self.prune}",
                f"distill: {self.distill.format(epochs=epochs)}",
                "quantize: {mode: auto}", "export: {}"]  # fmt: skip


def _entry(name: str) -> models.RealModel:
    return next(m for m in models.MODELS if m.name == name)


TARGETS = (
    Target(
        "easyocr_rec", _entry("easyocr_rec"), "easyocr_rec", (1, 64, 256),
        prune="{sparsity: 0.5, reconstruct: false}",
        chain_prune="{sparsity: 0.5, reconstruct: true}",
        distill="{{loss: kl, temperature: 2, epochs: {epochs}, lr: 0.0003, batch_size: 16, "
        "schedule: cosine}}",
        epochs=3, primary="string_agreement", figures=("string_agreement", "cosine", "cer"),
        counts={"train": 256, "val": 128, "calibration": 64, "eval": 256},
        quick_counts={"train": 32, "val": 8, "calibration": 16, "eval": 24},
    ),
    Target(
        "craft", _entry("craft"), "craft160", (3, 160, 160),
        prune="{method: channel, target_macs_ratio: 0.6, reconstruct: false}",
        chain_prune="{method: channel, target_macs_ratio: 0.6, reconstruct: true}",
        distill="{{loss: mse, epochs: {epochs}, lr: 0.0005, batch_size: 8, schedule: cosine}}",
        epochs=3, primary="iou", figures=("iou", "cosine"),
        counts={"train": 128, "val": 16, "calibration": 32, "eval": 64},
        quick_counts={"train": 8, "val": 4, "calibration": 8, "eval": 8},
        macs_target=0.6, latency_target=1.4,
    ),
)  # fmt: skip


def select(only: str | None) -> list[Target]:
    chosen = [t for t in TARGETS if only is None or only in t.name]
    if not chosen:
        raise SystemExit(f"--only {only!r} matches none of {', '.join(t.name for t in TARGETS)}")
    return chosen


def _model_block(target: Target, source: Path, path: Path | None) -> str:
    if path is not None:  # a .pt2 mcomp saved: it reloads without the factory
        return f"  path: {path}\n"
    block = variants.model_block(target.model, source)
    return block.replace(str(list(target.model.shape)), str(list(target.shape)))


def recipe(target: Target, data: dict, args, *, stages: list[str], output: str | None = None,
           path: Path | None = None) -> str:  # fmt: skip
    """A recipe as a user writes one: unlabelled train/val/calibration files, the stages."""
    import numpy as np

    calibration = len(np.load(data["calibration"])["x"])
    text = (
        "version: 1\nseed: 0\n"
        f"model:\n{_model_block(target, data['source'], path)}"
        # unlabelled .npz files: mcomp expects a `y` array unless told `labels: null`
        f"data:\n  train: {{path: {data['train']}, labels: null}}\n"
        f"  calibration: {{path: {data['calibration']}, labels: null}}\n"
        f"  eval: {{path: {data['val']}, labels: null}}\n"
        f"  calibration_samples: {calibration}\n  batch_size: 16\n"
        f"task: {target.model.task}\n"
        f"runtime:\n  threads: {args.threads}\n"
        f"  latency: {{batch: {target.model.batch}, warmup: 2, runs: 10}}\n"
        "stages:\n" + "".join(f"  - {stage}\n" for stage in stages)
    )
    return text + (f"output: {output}\n" if output else "")
