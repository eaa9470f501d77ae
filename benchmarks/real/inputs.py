"""Each model's inputs, preprocessed as the model's own pipeline does, cached as `.npz`.

One array `x` per file (no labels: every metric is fidelity to the fp32 model), so mcomp
recipes use them directly as `data.calibration` / `data.eval`. Calibration and evaluation
sets (and recover.py's train and val sets) are drawn from different seeds (different
texts, crops, clips); `build_split` also checks that no sample equals one of another split.

Preprocessing, from the packages' own code:
- PP-OCR (rapidocr-onnxruntime 1.4.4): BGR pixels, `(x / 255 - 0.5) / 0.5`; recogniser and
  direction classifier resize a line to height 48 keeping its aspect ratio (width at most
  320 and 192) and pad with zeros on the right; the detector takes the whole scene.
- easyocr english_g2: grey line resized to height 64 keeping its ratio (width at most 256),
  `(x / 255 - 0.5) / 0.5`, padded by repeating the last column (easyocr's NormalizePAD).
- CRAFT: RGB, `(x / 255 - mean) / std` with ImageNet's mean and std.
- MTCNN: RGB, `(x - 127.5) / 128`.
- basic-pitch: mono float waveform at 22050 Hz, windows of 43844 samples, shape (N, 43844, 1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import render
from PIL import Image


def _resize_line(image: Image.Image, height: int, max_width: int) -> Image.Image:
    width = min(max_width, math.ceil(height * image.width / image.height))
    return image.resize((width, height), Image.BILINEAR)


def _ppocr_line(image: Image.Image, width: int) -> np.ndarray:
    line = np.asarray(_resize_line(image, 48, width), dtype=np.float32)[:, :, ::-1]  # BGR
    out = np.zeros((3, 48, width), dtype=np.float32)
    out[:, :, : line.shape[1]] = (line.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def _lines(rng, photos, count) -> tuple[list[Image.Image], list[str]]:
    pairs = [render.text_line(rng, photos) for _ in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ppocr_rec(rng, photos, count) -> tuple[np.ndarray, list[str]]:
    images, texts = _lines(rng, photos, count)
    return np.stack([_ppocr_line(image, 320) for image in images]), texts


def ppocr_cls(rng, photos, count) -> tuple[np.ndarray, list[str]]:
    """Text lines, a third of them upside down (the classifier's 180-degree class)."""
    lines, texts = [], []
    for _ in range(count):
        image, text = render.text_line(rng, photos)
        flip = rng.random() < 0.33
        lines.append(_ppocr_line(image.rotate(180) if flip else image, 192))
        texts.append(("180: " if flip else "0: ") + text)
    return np.stack(lines), texts


def easyocr_rec(rng, photos, count) -> tuple[np.ndarray, list[str]]:
    images, texts = _lines(rng, photos, count)
    out = np.empty((count, 1, 64, 256), dtype=np.float32)
    for index, image in enumerate(images):
        grey = np.asarray(_resize_line(image.convert("L"), 64, 256), dtype=np.float32)
        grey = (grey / 255 - 0.5) / 0.5
        out[index, 0, :, : grey.shape[1]] = grey
        out[index, 0, :, grey.shape[1] :] = grey[:, -1:]
    return out, texts


def _scenes(rng, photos, count, size) -> list[np.ndarray]:
    return [np.asarray(render.text_scene(rng, photos, size), np.float32) for _ in range(count)]


def ppocr_det(rng, photos, count) -> tuple[np.ndarray, None]:
    scenes = _scenes(rng, photos, count, 320)
    return np.stack([(s[:, :, ::-1].transpose(2, 0, 1) / 255 - 0.5) / 0.5 for s in scenes]), None


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _craft(size: int) -> Callable:
    def build(rng, photos, count) -> tuple[np.ndarray, None]:
        scenes = _scenes(rng, photos, count, size)
        return np.stack(
            [(s.transpose(2, 0, 1) / 255 - IMAGENET_MEAN) / IMAGENET_STD for s in scenes]
        ), None

    return build


# 224 pixels, not easyocr's up-to-2560 canvas: a VGG16 at 224x224 already takes about
# 0.5 s per image on one core, and every variant is evaluated on every sample
craft = _craft(224)


# the astronaut photo's face (x0, y0, x1, y1 in its 512x512 pixels)
ASTRONAUT_FACE = (165, 45, 265, 165)


def _face_crop(rng, photos, size) -> Image.Image:
    """MTCNN's later stages see candidate windows: some around a face (jittered), most
    elsewhere in a photo."""
    if rng.random() < 0.4:
        x0, y0, x1, y1 = ASTRONAUT_FACE
        side = (x1 - x0) * rng.uniform(0.8, 1.3)
        cx = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * side
        cy = (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * side
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        return photos[0].crop(tuple(int(v) for v in box)).resize((size, size), Image.BILINEAR)
    return render.photo_crop(rng, photos, (size, size))


def _mtcnn(size: int) -> Callable:
    def build(rng, photos, count) -> tuple[np.ndarray, None]:
        crops = [np.asarray(_face_crop(rng, photos, size), np.float32) for _ in range(count)]
        return np.stack([(c.transpose(2, 0, 1) - 127.5) / 128 for c in crops]), None

    return build


def basic_pitch(rng, photos, count) -> tuple[np.ndarray, None]:
    return render.audio_clips(int(rng.integers(2**31)), count)[:, :, None], None


BUILDERS: dict[str, Callable] = {
    "ppocr_rec": ppocr_rec,
    "ppocr_cls": ppocr_cls,
    "ppocr_det": ppocr_det,
    "easyocr_rec": easyocr_rec,
    "craft": craft,
    # recover.py trains CRAFT (forward and backward, student and teacher): 160 pixels
    # halves 224's pixels, so the distillation fits a few minutes on 2 cores
    "craft160": _craft(160),
    "rnet": _mtcnn(24),
    "onet": _mtcnn(48),
    "basic_pitch": basic_pitch,
}
# train and val: recover.py's distillation inputs and its recipes' eval split (checkpoint
# choice), distinct from the evaluation inputs every figure is measured on
SEEDS = {"calibration": 1, "eval": 2, "train": 3, "val": 4}


def build_split(builder: str, split: str, count: int, files: dict[str, Path], cache: Path) -> Path:
    """`cache/inputs/BUILDER-SPLIT-COUNT.npz` (array `x`), made when missing; the texts
    rendered into it (recognisers, classifier) go to a `.json` beside it."""
    path = cache / "inputs" / f"{builder}-{split}-{count}.npz"
    if path.exists():
        return path
    render.check_tools()
    # seeded by builder and split only, so a larger set starts with a smaller one's samples
    seed = int(hashlib.sha256(builder.encode()).hexdigest()[:8], 16) + SEEDS[split]
    rng, photos = np.random.default_rng(seed), render.load_photos(files)
    x, texts = BUILDERS[builder](rng, photos, count)
    x, texts = _disjoint(builder, split, x, texts, rng, photos, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.float32))
    if texts is not None:
        path.with_suffix(".json").write_text(json.dumps(texts, indent=0) + "\n")
    return path


def _digest(sample: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(sample, np.float32).tobytes()).digest()


def _disjoint(builder, split, x, texts, rng, photos, cache):
    """Samples equal to one of another split already made (small crops of a flat photo
    region can coincide) replaced by further draws of the same generator, so the splits
    are disjoint: evaluation from calibration (run.py), train and val from both
    (recover.py)."""
    others = [
        p
        for p in sorted((cache / "inputs").glob(f"{builder}-*.npz"))
        if p.stem.rsplit("-", 2)[0] == builder and p.stem.rsplit("-", 2)[1] != split
    ]
    seen = {_digest(s) for c in others for s in np.load(c)["x"]}
    for _ in range(10):
        clash = [i for i, sample in enumerate(x) if _digest(sample) in seen]
        if not clash:
            return x, texts
        extra, extra_texts = BUILDERS[builder](rng, photos, len(clash))
        for k, i in enumerate(clash):
            x[i] = extra[k]
            if texts is not None:
                texts[i] = extra_texts[k]
    raise RuntimeError(f"{builder}: {split} samples keep equalling another split's samples")
