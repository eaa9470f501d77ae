"""The registry of real models: one `RealModel` entry per benchmarked network.

Each entry names its file (a member fetched by fetch.py), whether mcomp gets it as ONNX or
as a state dict with a factory (`easyocr_nets:...`), its input builder (inputs.py), the
sample counts, the larger timing batch, its fidelity function (metrics.py) and the primary
figure the verdicts compare. A later benchmark (prune -> distill on the same models) reuses
the entries: the same `source`/`factory`, the same cached inputs (`inputs.build_split`),
the same fidelity functions on the same fp32 references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import metrics
import numpy as np

RAPIDOCR = "rapidocr_onnxruntime/models/"
EASYOCR = "easyocr_en_models/models/"


@dataclass(frozen=True)
class RealModel:
    name: str
    source: str  # member path in fetch.WHEELS
    kind: str  # "onnx" | "torch" (state dict + factory)
    builder: str  # inputs.BUILDERS key
    shape: tuple[int, ...]  # one sample's input shape
    fidelity: Callable  # (reference outputs, outputs) -> dict; see `outputs`
    primary: str  # key of the fidelity dict the verdicts compare; higher is better
    share: bool  # primary is a share of samples (paired McNemar test applies)
    task: str  # mcomp recipe `task:` (its default fidelity metric follows from it)
    budget_metric: str  # mcomp metric for the budget variant
    batch: int  # larger timing batch
    counts: tuple[int, int] = (64, 256)  # calibration, evaluation samples
    quick_counts: tuple[int, int] = (16, 32)
    factory: str | None = None
    outputs: str = "first"  # "first": fidelity gets output 0; "all": the list of outputs
    depthwise: bool = False  # the depthwise-CNN target (KL / rel. error vs ORT U8S8) applies
    error_figure: str = "rel_l2"  # the figure that target compares (lower is better)
    nncf_transformer: bool = False  # also NNCF with model_type=TRANSFORMER
    notes: tuple[str, ...] = field(default_factory=tuple)


def ppocr_charset(model) -> list[str]:
    """PP-OCR's recogniser classes after the blank: its dictionary (stored in the ONNX
    metadata by rapidocr's converter) plus the space PaddleOCR appends."""
    meta = {p.key: p.value for p in model.metadata_props}
    return meta["character"].splitlines() + [" "]


def _ppocr_rec_fidelity(reference: np.ndarray, outputs: np.ndarray) -> dict:
    import fetch
    import onnx

    path = fetch.CACHE / "files" / (RAPIDOCR + "ch_PP-OCRv4_rec_infer.onnx")
    charset = ppocr_charset(onnx.load(str(path), load_external_data=False))
    return metrics.recognizer(charset)(reference, outputs)


def _easyocr_rec_fidelity(reference: np.ndarray, outputs: np.ndarray) -> dict:
    from easyocr_nets import EASYOCR_CHARACTERS

    return metrics.recognizer(EASYOCR_CHARACTERS)(reference, outputs)


# basic-pitch's own inference code names its ONNX outputs so (basic_pitch/inference.py)
BASIC_PITCH_OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2"}

# cheapest first, so an interrupted full run has measured the most models (see --resume)
MODELS = (
    RealModel(
        "ppocr_cls", RAPIDOCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx", "onnx", "ppocr_cls",
        (3, 48, 192), metrics.classifier, "top1_agreement", True, "classification",
        "top1_agreement", 32, depthwise=True, error_figure="kl",
    ),
    RealModel(
        "mtcnn_rnet", "facenet_pytorch/data/rnet.pt", "torch", "rnet", (3, 24, 24),
        metrics.classifier, "top1_agreement", True, "classification", "top1_agreement", 32,
        counts=(64, 512), quick_counts=(16, 64), factory="easyocr_nets:rnet",
    ),
    RealModel(
        "mtcnn_onet", "facenet_pytorch/data/onet.pt", "torch", "onet", (3, 48, 48),
        metrics.classifier, "top1_agreement", True, "classification", "top1_agreement", 32,
        counts=(64, 512), quick_counts=(16, 64), factory="easyocr_nets:onet",
    ),
    RealModel(
        "basic_pitch", "basic_pitch/saved_models/icassp_2022/nmp.onnx", "onnx", "basic_pitch",
        (43844, 1), metrics.posteriorgrams(BASIC_PITCH_OUTPUTS),
        "note_f1", False, "regression", "cosine", 8, counts=(64, 128), outputs="all",
    ),
    RealModel(
        "easyocr_rec", EASYOCR + "english_g2.pth", "torch", "easyocr_rec", (1, 64, 256),
        _easyocr_rec_fidelity, "string_agreement", True, "classification", "top1_agreement",
        8, factory="easyocr_nets:recognizer",
    ),
    RealModel(
        "ppocr_rec", RAPIDOCR + "ch_PP-OCRv4_rec_infer.onnx", "onnx", "ppocr_rec",
        (3, 48, 320), _ppocr_rec_fidelity, "string_agreement", True, "classification",
        "top1_agreement", 8, nncf_transformer=True,
    ),
    RealModel(
        "ppocr_det", RAPIDOCR + "ch_PP-OCRv4_det_infer.onnx", "onnx", "ppocr_det",
        (3, 320, 320), metrics.detector(0.3), "iou", False, "regression", "cosine", 8,
        counts=(64, 128), depthwise=True,
    ),
    RealModel(
        "craft", EASYOCR + "craft_mlt_25k.pth", "torch", "craft", (3, 224, 224),
        metrics.detector(0.4, channel=0), "iou", False, "regression", "cosine", 4,
        counts=(32, 64), quick_counts=(8, 8), factory="easyocr_nets:craft",
    ),
)  # fmt: skip


def select(only: str | None) -> list[RealModel]:
    chosen = [m for m in MODELS if only is None or only in m.name]
    if not chosen:
        raise SystemExit(f"--only {only!r} matches none of {', '.join(m.name for m in MODELS)}")
    return chosen
