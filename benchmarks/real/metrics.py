"""Fidelity of a quantized model to its fp32 original on the same inputs; no labels.

Every function takes the fp32 outputs and the variant's outputs (numpy arrays, first axis =
samples) and returns a dict of figures plus, for share metrics, the per-sample hit vector
under the key `hits` (a bool array), which the paired test (`mcnemar`) compares between two
variants on the same samples.

- classifier: top-1 agreement with fp32, mean KL(p_fp32 || p_int8) in nats (softmax over
  the last axis unless the outputs are already probabilities).
- maps and embeddings: mean per-sample cosine similarity and relative L2 error
  ||y - y_fp32|| / ||y_fp32|| over the whole set.
- CTC recogniser: greedy decode (argmax per step, merge repeats, drop blanks) compared with
  the fp32 decode: string equality rate and character error rate (edit distance / length).
- detector: IoU of the binarised probability maps (threshold per model) against fp32's,
  pooled over the set; `hits` is a sample whose own IoU is at least 0.9.
- basic-pitch: F1 of the binarised (0.5) note and onset posteriorgrams against fp32's.
"""

from __future__ import annotations

from math import comb

import numpy as np


def _probabilities(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    sums = x.sum(axis=-1)
    if x.min() >= 0 and np.allclose(sums, 1, atol=1e-3):
        return x
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def map_error(reference: np.ndarray, outputs: np.ndarray) -> dict:
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = outputs.reshape(len(outputs), -1).astype(np.float64)
    cos = np.sum(a * b, axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )
    return {
        "cosine": float(cos.mean()),
        "rel_l2": float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12)),
    }


def _are_probabilities(x: np.ndarray) -> bool:
    return bool(x.min() >= 0 and np.allclose(x.astype(np.float64).sum(axis=-1), 1, atol=1e-3))


def classifier(reference: np.ndarray, outputs: np.ndarray) -> dict:
    # the fp32 model decides whether its outputs are probabilities or logits, for both: an
    # int8 model whose softmax output was rounded to 1/255 steps no longer sums to 1 within
    # 1e-3, and taking its probabilities for logits once cost a constant ~0.28 nats of KL
    # whatever was quantized (benchmarks/real/ranking.py found it)
    if _are_probabilities(reference):
        p = reference.astype(np.float64)
        q = np.maximum(outputs.astype(np.float64), 0.0)
        q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1e-12)
    else:
        p, q = _probabilities(reference), _probabilities(outputs)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=-1)
    hits = reference.argmax(axis=-1) == outputs.argmax(axis=-1)
    hits = hits.reshape(len(hits), -1).all(axis=1)
    return {"top1_agreement": float(hits.mean()), "kl": float(kl.mean()), "hits": hits}


def ctc_greedy(logits: np.ndarray, charset: str | list[str]) -> list[str]:
    """Greedy CTC decode of N x T x C scores; class 0 is the blank, class i is charset[i-1]."""
    out = []
    for best in logits.argmax(axis=-1):
        keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != 0)
        out.append("".join(charset[i - 1] for i in best[keep]))
    return out


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def recognizer(charset: str | list[str]):
    """Fidelity of a CTC recogniser: its classifier figures per time step plus the decode."""

    def measure(reference: np.ndarray, outputs: np.ndarray) -> dict:
        expected, got = ctc_greedy(reference, charset), ctc_greedy(outputs, charset)
        hits = np.array([e == g for e, g in zip(expected, got, strict=True)])
        errors = sum(edit_distance(e, g) for e, g in zip(expected, got, strict=True))
        steps = classifier(reference, outputs)
        return {
            "string_agreement": float(hits.mean()),
            "cer": errors / max(1, sum(len(e) for e in expected)),
            # per time step; `lines_all_steps`: lines whose every step's argmax is fp32's
            "step_top1": float(np.mean(reference.argmax(-1) == outputs.argmax(-1))),
            "lines_all_steps": steps["top1_agreement"],
            "kl": steps["kl"],
            **map_error(reference, outputs),
            "hits": hits,
        }

    return measure


def detector(threshold: float, channel: int | None = None):
    """Fidelity of a detector's probability map, binarised at `threshold`; `channel` picks
    one score map from a channels-last output (CRAFT's region score)."""

    def measure(reference: np.ndarray, outputs: np.ndarray) -> dict:
        if channel is not None:
            reference, outputs = reference[..., channel], outputs[..., channel]
        a = reference.reshape(len(reference), -1) > threshold
        b = outputs.reshape(len(outputs), -1) > threshold
        inter, union = (a & b).sum(axis=1), (a | b).sum(axis=1)
        per_sample = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        return {
            "iou": float(inter.sum() / max(union.sum(), 1)),
            "text_pixels": float(a.mean()),
            **map_error(reference, outputs),
            "hits": per_sample >= 0.9,
        }

    return measure


def _f1(a: np.ndarray, b: np.ndarray) -> float:
    both = (a & b).sum()
    return float(2 * both / max(a.sum() + b.sum(), 1))


def posteriorgrams(names: dict[str, str]):
    """basic-pitch: F1 against fp32 of each output binarised at 0.5; `names` maps a label
    (note, onset) to the output's name; the measure gets {output name: array} dicts."""

    def measure(references: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict:
        out = {}
        for label, name in names.items():
            a, b = references[name] > 0.5, outputs[name] > 0.5
            out[f"{label}_f1"] = _f1(a, b)
            out[f"{label}_active"] = float(a.mean())
            errors = map_error(references[name], outputs[name])
            out.update({f"{label}_{key}": value for key, value in errors.items()})
        return out

    return measure


def mcnemar(ours: np.ndarray, theirs: np.ndarray, alpha: float = 0.05) -> dict:
    """Exact McNemar test on two per-sample hit vectors over the same samples (the test
    bench_int8.py uses): only the samples exactly one of the two gets right carry
    information. `worse`: ours has fewer hits and the two-sided p is below `alpha`."""
    only_ours = int(np.sum(ours & ~theirs))
    only_theirs = int(np.sum(~ours & theirs))
    n, k = only_ours + only_theirs, min(only_ours, only_theirs)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {
        "worse": only_theirs > only_ours and p < alpha,
        "better": only_ours > only_theirs and p < alpha,
        "only_ours": only_ours,
        "only_theirs": only_theirs,
        "p": p,
    }
