"""Proof that the rebuilt networks and the preprocessing are right, on rendered inputs.

    python benchmarks/real/check_nets.py [--samples 64]

- every state dict loads into its rebuilt module with `strict=True` (after the `module.`
  prefix DataParallel added);
- the recognisers read the rendered lines: share of lines whose fp32 greedy CTC decode
  equals the rendered text, and the character error rate (easyocr english_g2 in torch,
  PP-OCRv4 in onnxruntime), and the direction classifier's accuracy on 0/180 degrees;
- CRAFT's region map lights up on text: on one word rendered on a white page, the share of
  region > 0.4 pixels inside the word's box, and no region > 0.4 on the blank page;
- MTCNN's RNet/ONet give the astronaut's face a higher face probability than photo crops.
A wrong layer order, a wrong normalisation or a wrong character set shows as near-zero
reading rates here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import easyocr_nets  # noqa: E402
import fetch  # noqa: E402
import inputs  # noqa: E402
import metrics  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402


def _module(entry, files):
    import torch

    build = getattr(easyocr_nets, entry.factory.split(":")[1])
    state = torch.load(files[entry.source], weights_only=True, map_location="cpu")
    module = build()
    module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return module.eval()


def _run(entry, files, x):
    if entry.kind == "torch":
        import torch

        with torch.no_grad():
            out = _module(entry, files)(torch.from_numpy(x))
        return (out[0] if isinstance(out, tuple) else out).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(files[entry.source]), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def reading(entry, files, samples: int) -> str:
    path = inputs.build_split(entry.builder, "eval", samples, files, fetch.CACHE)
    x, texts = np.load(path)["x"], json.loads(path.with_suffix(".json").read_text())
    out = _run(entry, files, x)
    if entry.name == "ppocr_cls":
        said = ["0" if i == 0 else "180" for i in out.argmax(axis=1)]
        right = np.mean([s == t.split(":")[0] for s, t in zip(said, texts, strict=True)])
        return f"{entry.name}: direction right on {right:.3f} of {samples} lines"
    if entry.name == "ppocr_rec":
        import onnx

        charset = models.ppocr_charset(onnx.load(str(files[entry.source])))
    else:
        charset = easyocr_nets.EASYOCR_CHARACTERS
    read = [r.strip() for r in metrics.ctc_greedy(out, charset)]
    exact = np.mean([r == t for r, t in zip(read, texts, strict=True)])
    cer = sum(metrics.edit_distance(r, t) for r, t in zip(read, texts, strict=True)) / sum(
        len(t) for t in texts
    )
    return f"{entry.name}: reads {exact:.3f} of {samples} lines exactly, CER {cer:.3f}"


def craft_lights_up(entry, files) -> str:
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (224, 224), (255, 255, 255))
    blank = np.asarray(page, np.float32)
    font = ImageFont.truetype(str(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")), 28)
    ImageDraw.Draw(page).text((40, 90), "Readability", font=font, fill=(0, 0, 0))
    box = ImageDraw.Draw(page).textbbox((40, 90), "Readability", font=font)
    pages = np.stack([np.asarray(page, np.float32), blank])
    x = (pages.transpose(0, 3, 1, 2) / 255 - inputs.IMAGENET_MEAN) / inputs.IMAGENET_STD
    region = _run(entry, files, x.astype(np.float32))[..., 0]  # half resolution
    lit = region[0] > 0.4
    x0, y0, x1, y1 = (v // 2 for v in box)
    inside = lit[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2].sum() / max(lit.sum(), 1)
    return (
        f"craft: {lit.sum()} region pixels > 0.4 on one word, {inside:.3f} of them inside its "
        f"box; {int((region[1] > 0.4).sum())} on the blank page; max region {region[0].max():.2f}"
    )


def faces(entry, files) -> str:
    path = inputs.build_split(entry.builder, "eval", 64, files, fetch.CACHE)
    probability = _run(entry, files, np.load(path)["x"])[:, 1]
    top = np.sort(probability)[::-1]
    return (
        f"{entry.name}: face probability > 0.5 on {int((probability > 0.5).sum())} of 64 "
        f"crops (40 % are windows on the astronaut's face); top five {np.round(top[:5], 3)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    files = fetch.fetch()
    for entry in models.MODELS:
        if entry.kind == "torch":
            _module(entry, files)
            print(f"{entry.name}: state dict loads with strict=True")
        if entry.builder in ("ppocr_rec", "ppocr_cls", "easyocr_rec"):
            print(reading(entry, files, args.samples))
        elif entry.name == "craft":
            print(craft_lights_up(entry, files))
        elif entry.name.startswith("mtcnn"):
            print(faces(entry, files))


if __name__ == "__main__":
    main()
