"""Real-looking pictures and sounds, made locally and deterministically (seeded numpy
generators): rendered English text lines and text scenes on photo crops, photo crops for
MTCNN, and tones, chords and espeak-ng speech with noise for basic-pitch.

The samples go through each model's own preprocessing in `inputs.py`; this module only
makes PIL images and float waveforms.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
]
APT = "apt-get install -y fonts-dejavu espeak-ng sox"


def check_tools() -> None:
    """Fail early, with the command that installs what is missing."""
    missing = [f for f in FONTS if not (FONT_DIR / f).exists()]
    missing += [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install them with `{APT}`")


@cache
def _zen() -> str:
    """The Zen of Python: English sentences that ship with every interpreter (the module
    prints them when first imported, hence the redirect)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


@cache
def _words() -> tuple[str, ...]:
    text = _zen()
    return tuple(w.strip(".,!*-'\"") for w in text.split() if w.strip(".,!*-'\"").isalpha())


def phrase(rng: np.random.Generator) -> str:
    """One to three words, sometimes capitalised, sometimes with a number or a price."""
    words = list(rng.choice(_words(), size=int(rng.integers(1, 4))))
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.25:
        words.append(rng.choice([f"{rng.integers(1, 2100)}", f"${rng.integers(1, 99)}.99"]))
    if rng.random() < 0.15:
        words = [w.upper() for w in words]
    return " ".join(words)


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / rng.choice(FONTS)), size)


def _ink(rng: np.random.Generator, background: float) -> tuple[int, int, int]:
    """A text colour that contrasts with a background of mean brightness `background`."""
    level = rng.integers(0, 70) if background > 110 else rng.integers(190, 256)
    tint = rng.integers(-25, 26, size=3)
    return tuple(int(np.clip(level + t, 0, 255)) for t in tint)


def text_line(rng: np.random.Generator, photos: list[Image.Image]) -> tuple[Image.Image, str]:
    """A tight crop of one rendered text line (RGB) and its text: plain paper-like
    backgrounds mostly, a photo crop a third of the time, mild blur or noise sometimes."""
    text = phrase(rng)
    font = _font(rng, int(rng.integers(20, 44)))
    left, top, right, bottom = font.getbbox(text)
    pad = [int(p) for p in rng.integers(2, 10, size=4)]
    size = (right - left + pad[0] + pad[2], bottom - top + pad[1] + pad[3])
    if rng.random() < 0.33:
        canvas = photo_crop(rng, photos, size)
    else:
        level = int(rng.integers(170, 256)) if rng.random() < 0.85 else int(rng.integers(0, 70))
        canvas = Image.new("RGB", size, tuple(int(level - rng.integers(0, 15)) for _ in "rgb"))
    mean = float(np.asarray(canvas.convert("L")).mean())
    ImageDraw.Draw(canvas).text(
        (pad[0] - left, pad[1] - top), text, font=font, fill=_ink(rng, mean)
    )
    return _degrade(rng, canvas), text


def _degrade(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    if rng.random() < 0.3:
        pixels = np.asarray(image, dtype=np.float32)
        pixels += rng.normal(0, rng.uniform(2, 12), size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image


def photo_crop(
    rng: np.random.Generator, photos: list[Image.Image], size: tuple[int, int]
) -> Image.Image:
    """A random crop of a random photo, scaled to `size` (width, height)."""
    photo = photos[int(rng.integers(len(photos)))]
    scale = rng.uniform(0.3, 1.0)
    width = max(8, int(min(photo.width, photo.height * size[0] / size[1]) * scale))
    height = max(8, int(width * size[1] / size[0]))
    x0 = int(rng.integers(0, photo.width - width + 1))
    y0 = int(rng.integers(0, photo.height - height + 1))
    return photo.crop((x0, y0, x0 + width, y0 + height)).resize(size, Image.BILINEAR)


def text_scene(rng: np.random.Generator, photos: list[Image.Image], size: int) -> Image.Image:
    """A square scene: a photo crop (or a page a quarter of the time) with 2-6 text lines
    pasted at random places, of random sizes and colours."""
    if rng.random() < 0.25:
        scene = Image.new("RGB", (size, size), tuple(int(rng.integers(200, 256)) for _ in "rgb"))
    else:
        scene = photo_crop(rng, photos, (size, size))
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(2, 7))):
        text, font = phrase(rng), _font(rng, int(rng.integers(size // 24, size // 9)))
        left, top, right, bottom = font.getbbox(text)
        x = int(rng.integers(0, max(1, size - (right - left))))
        y = int(rng.integers(0, max(1, size - (bottom - top))))
        region = scene.crop((x, y, x + right - left, y + bottom - top)).convert("L")
        draw.text((x - left, y - top), text, font=font, fill=_ink(rng, np.asarray(region).mean()))
    return _degrade(rng, scene)


def load_photos(files: dict[str, Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for m, p in sorted(files.items()) if "skimage" in m]


# basic-pitch's audio: 22050 Hz, windows of 2 s less one hop (its AUDIO_N_SAMPLES)
SAMPLE_RATE, WINDOW = 22050, 43844


def _tone(rng: np.random.Generator, midi: float, seconds: np.ndarray) -> np.ndarray:
    """A harmonic tone with a random timbre and an attack/decay envelope."""
    freq = 440.0 * 2 ** ((midi - 69) / 12)
    harmonics = rng.uniform(0, 1, size=6) ** 2 / np.arange(1, 7)
    wave = sum(a * np.sin(2 * np.pi * freq * k * seconds) for k, a in enumerate(harmonics, 1))
    start, length = rng.uniform(0, 1.2), rng.uniform(0.3, 2.0)
    t = seconds - start
    envelope = np.where(t < 0, 0, np.minimum(t / 0.01, 1) * np.exp(-np.maximum(t, 0) / length))
    return wave * envelope


def music_clip(rng: np.random.Generator) -> np.ndarray:
    """One window of a single tone, a chord, or a short melody (1-4 notes)."""
    seconds = np.arange(WINDOW) / SAMPLE_RATE
    root = rng.uniform(36, 84)
    chords = ([0], [0, 4, 7], [0, 3, 7, 10], [0, 5, 9], [0, 7], [0, 2, 4, 5])
    intervals = chords[int(rng.integers(len(chords)))]
    return sum(_tone(rng, root + step, seconds) for step in intervals)


@cache
def _speech_sentences() -> tuple[str, ...]:
    text = _zen()
    return tuple(line for line in text.splitlines()[2:] if line)


def speech_clip(rng: np.random.Generator, workdir: Path) -> np.ndarray:
    """One window of espeak-ng speech (random sentence, voice pitch and speed)."""
    sentence = _speech_sentences()[int(rng.integers(len(_speech_sentences())))]
    raw, wav = workdir / "speech.wav", workdir / "speech22k.wav"
    subprocess.run(
        ["espeak-ng", "-v", str(rng.choice(["en", "en-us", "en+f3", "en+m3"])),
         "-p", str(int(rng.integers(20, 80))), "-s", str(int(rng.integers(130, 200))),
         "-w", str(raw), sentence],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-b", "16", str(wav)], check=True)
    samples = np.frombuffer(wav.read_bytes()[44:], dtype="<i2").astype(np.float32) / 32768
    clip = np.zeros(WINDOW, dtype=np.float32)
    offset = int(rng.integers(0, max(1, len(samples) - WINDOW)))
    part = samples[offset : offset + WINDOW]
    clip[: len(part)] = part
    return clip


def audio_clip(rng: np.random.Generator, workdir: Path) -> np.ndarray:
    """Music or speech (music two thirds of the time), mixed with white noise at a random
    SNR, at a random level from quiet (-40 dBFS peak) to full scale."""
    clip = music_clip(rng) if rng.random() < 0.67 else speech_clip(rng, workdir)
    clip = clip / max(float(np.abs(clip).max()), 1e-6)
    noise = rng.normal(0, 1, WINDOW) * 10 ** (-rng.uniform(10, 40) / 20)
    mixed = clip + noise
    peak = 10 ** (-rng.uniform(0, 40) / 20)
    return (mixed / np.abs(mixed).max() * peak).astype(np.float32)


def audio_clips(seed: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="mcomp-bench-audio-") as tmp:
        return np.stack([audio_clip(rng, Path(tmp)) for _ in range(count)])
