"""Quantization beyond plain int8: accuracy-aware fallback, QAT vs PTQ, 4-bit and pow2.

    python benchmarks/bench_quant_extra.py [--threads 1] [--out benchmarks/RESULTS.md]

1. Fallback: the outlier MLP of tests/test_quantize_fallback.py (two hidden units scaled by
   1000, so per-tensor uint8 loses the others) quantized without a budget and with
   `max_accuracy_drop: 0.01`, once with the default search (cheap alternatives first: other
   calibration methods) and once with `fallback: {alternatives: false}` (straight to float
   nodes): accuracy drop, the trial chosen, nodes left in float, latency of the chosen model
   against the all-int8 one (batch 64, each session in its own block).
2. QAT vs PTQ on the bundled digits CNN, same quantization settings (static QDQ, U8S8,
   symmetric per-channel weights): PTQ of the model as shipped; fp32 finetune for the same
   epochs/lr then PTQ (a control: does QAT gain from quantization-awareness or just from more
   training?); QAT.
3. `scale: pow2` and `mode: weight4` on the digits CNN: accuracy and compressed size.

Everything runs through real recipes (mcomp.run.pipeline). The section it prints replaces
`## Quantization: fallback, QAT, low-bit` in the results file, or is appended.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

from results_file import update_results  # benchmarks/ is the script's folder

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Quantization: fallback, QAT, low-bit"
DIGITS = """\
version: 1
seed: 0
model: {builtin: digits_cnn}
data: {train: digits, eval: digits}
runtime: {threads: %d, latency: {enabled: false}}
stages:
%s
"""
OUTLIER = """\
version: 1
seed: 0
model: {path: mlp.onnx}
data: {train: train.npz, eval: eval.npz, batch_size: 64, calibration_samples: 128}
runtime: {threads: %d, latency: {enabled: false}}
stages:
  - quantize: %s
"""


def run(folder: Path, text: str) -> dict:
    from mcomp.progress import NullProgress
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(text)
    result = run_pipeline(
        load_recipe(str(folder / "recipe.yaml"), ()),
        RunOptions(out_dir=folder / "out"),
        NullProgress(),
    )
    return result.report


def fallback_rows(work: Path, threads: int) -> list[str]:
    sys.path.insert(0, str(REPO))
    from tests.test_quantize_fallback import build_outlier_mlp

    work.mkdir(parents=True, exist_ok=True)
    build_outlier_mlp(work)

    def recipe(options: str) -> str:
        return (
            (OUTLIER % (threads, options))
            .replace("path: mlp.onnx", f"path: {work / 'mlp.onnx'}")
            .replace("train.npz", str(work / "train.npz"))
            .replace("eval.npz", str(work / "eval.npz"))
        )

    plain = run(work / "plain", recipe("{}"))
    base = plain["baseline"]["metrics"]["metric"]
    rows = [
        "| outlier MLP (16-32-32-4) | search | fp32 accuracy | plain int8 | after fallback | "
        "chosen | float nodes | trials | all-int8 ms | chosen ms (batch 64) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, (search, options) in enumerate(
        (
            ("alternatives first (default)", "{max_accuracy_drop: 0.01}"),
            (
                "float nodes only (`alternatives: false`)",
                "{max_accuracy_drop: 0.01, fallback: {alternatives: false}}",
            ),
        )
    ):
        budget = run(work / f"budget{index}", recipe(options))
        fallback = budget["stages"][0]["details"]["fallback"]
        cost = fallback["latency_cost"]
        rows.append(
            f"| | {search} | {base:.4f} | {plain['stages'][0]['metrics']['metric']:.4f} | "
            f"{budget['stages'][0]['metrics']['metric']:.4f} | {fallback['chosen']} | "
            f"{len(fallback['float_nodes'])} ({', '.join(fallback['float_nodes'])}) | "
            f"{len(fallback['trials'])} ({fallback['seconds']} s) | {cost['all_int8_ms']} | "
            f"{cost['chosen_ms']} ({cost['chosen_over_all_int8']}x) |"
        )
    return rows


def digits_rows(work: Path, threads: int, epochs: int) -> list[str]:
    ptq = "  - quantize: {symmetric_weights: true}"
    cases = [
        ("PTQ (model as shipped)", ptq),
        (
            f"fp32 finetune {epochs} ep (lr 1e-4) → PTQ",
            f"  - finetune: {{epochs: {epochs}, lr: 0.0001}}\n{ptq}",
        ),
        (f"QAT {epochs} ep (lr 1e-4)", f"  - qat: {{epochs: {epochs}, lr: 0.0001}}"),
        ("PTQ, scale: pow2", "  - quantize: {symmetric_weights: true, scale: pow2}"),
        ("weight4 (Linear layers, block 32)", "  - quantize: {mode: weight4}"),
    ]
    rows = ["| digits CNN | accuracy | Δ vs fp32 | compressed bytes |", "|---|---|---|---|"]
    for index, (label, stages) in enumerate(cases):
        report = run(work / f"digits{index}", DIGITS % (threads, stages))
        base = report["baseline"]["metrics"]
        final = report["stages"][-1]["metrics"]
        if index == 0:
            rows.append(
                f"| fp32 baseline | {base['metric']:.4f} | | {base['size_compressed_bytes']} |"
            )
        rows.append(
            f"| {label} | {final['metric']:.4f} | "
            f"{final['metric'] - base['metric']:+.4f} | "
            f"{final['size_compressed_bytes']} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ["MCOMP_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fallback = fallback_rows(Path(tmp) / "fallback", args.threads)
        digits = digits_rows(Path(tmp), args.threads, args.epochs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    section = "\n".join(
        [
            HEADING,
            "",
            f"`python benchmarks/bench_quant_extra.py --threads {args.threads} --epochs "
            f"{args.epochs}` — {datetime.date.today().isoformat()}, {platform.processor() or ''} "
            f"{os.cpu_count()} CPUs, load {load:.2f}, onnxruntime CPU.",
            "",
            "Accuracy-aware fallback (`quantize: {max_accuracy_drop: 0.01}`):",
            "",
            *fallback,
            "",
            "QAT vs PTQ and low-bit variants (eval split: 360 held-out digits, so one sample is "
            "0.0028):",
            "",
            *digits,
            "",
        ]
    )
    print(section)
    if args.out is not None:
        update_results(args.out, section)


if __name__ == "__main__":
    main()
