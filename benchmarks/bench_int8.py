"""int8 vs fp32 in onnxruntime on three model families, and mcomp's static defaults vs ORT's.

    python benchmarks/bench_int8.py [--threads 1] [--nncf] [--out benchmarks/RESULTS.md]
                                    [--only TEXT]

Models: the bundled trained digits ResNet (45K parameters; real data and labels, so its rows
give the task metric), then random weights and inputs, seeded, for speed and numerical error:
a small ResNet-style CNN on 3x32x32 (0.3M parameters), ResNet-18 for
3x32x32 (11M; the issue's reference model), an MLP, and three 2-layer transformer
encoders (d128/ff256/32 tokens, d256/ff1024/64 tokens, BERT-mini's width, and d512/ff2048/64
tokens, to show where dynamic int8 starts to pay). Each is exported
to fp32 ONNX with mcomp's exporter, quantized by mcomp's quantize stage (CNN/MLP: the default
static U8S8 QDQ, and the MLP also `mode: dynamic`, what `mode: auto` picks for it;
transformers: `mode: dynamic`, and static with and without `float_attention` and with
`op_types: [MatMul, Gemm]`, which keeps the residual stream in float), and the CNNs
also by plain
`onnxruntime.quantization.quantize_static` with ORT's defaults (QDQ, S8S8, per-tensor, MinMax,
no pre-processing) on the same calibration data. The transformers get a second fp32 baseline,
the same model with onnxruntime's SkipLayerNormFusion off (faster here, see
`NO_SLN` in `measure`), and a profile (onnxruntime's profiler, `float_bounds`) of the time
each int8 variant still spends outside int8 kernels: the most it could gain (Amdahl's bound).
A targets table states, from the figures, whether each of mcomp's int8 variants reaches the
issue's targets (2.5x fp32 at batch 64, 3.9x smaller), and which variants meet both for each
kind of model the issue names (a convolutional model, an MLP, a small transformer encoder).
The closing notes state whether mcomp's default is at least as accurate and fast as each
rival (speeds within 3 % count as a tie; top-1 and accuracy by an exact paired test, so that
3 samples in 1024 is not read as a loss).

`--nncf`: the CNNs and the MLP are also quantized by NNCF's post-training quantization
(`nncf.quantize` with its defaults, ONNX backend) on the same fp32 ONNX model and the same
calibration samples. NNCF runs in its own venv (NNCF_VENV, default /tmp/mcomp-nncf-venv,
created with `pip install nncf onnx onnxruntime` when missing; nothing is installed into
mcomp's venv); the int8 model it writes is timed here like the others.

Every session uses the same options (mcomp.measure.ort_session.create_session) and is timed in
its own
block (warm-up, then timed runs), the variants in rotating order over ROUNDS rounds; a figure
is the lowest of the per-round medians. The noise on these shared 2-core machines only adds
time, and in bursts: the same int8 session of the digits model ran 0.89 ms in one block and
1.54 ms in the next, so the median of 3 rounds could still land in a slow burst. Relative
L2 error and top-1 agreement (argmax of the int8 output equal to the fp32 one, the
task-metric proxy for random weights) are on 1024 other random inputs (the digits model:
its 360 eval digits, plus accuracy against their labels).
`--only TEXT` runs only the models whose name contains TEXT, without touching the results
file. Threads other than 1 get their own section, `## int8 vs fp32 (threads=N)`.
The section it prints replaces `## int8 vs fp32` in the results file, or is appended.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import update_results  # benchmarks/ is the script's folder

REPO = Path(__file__).resolve().parent.parent
HEADING = "## int8 vs fp32"
ROUNDS = 5
EVAL_SAMPLES = 1024
NO_SLN = "fp32, SkipLayerNormFusion off"
# static int8 only at MatMul/Gemm inputs: the residual stream (Add, LayerNorm) stays float
MATMUL_ONLY = "mcomp static, op_types: [MatMul, Gemm]"
TIE = 0.03  # speeds within 3 % are reported as a tie (run-to-run noise here is larger)
NNCF_VENV = Path(os.environ.get("NNCF_VENV", "/tmp/mcomp-nncf-venv"))
NNCF_SCRIPT = """
import sys

import nncf
import numpy as np
import onnx

source, samples, target = sys.argv[1:4]
model = onnx.load(source)
x = np.load(samples)["x"]
dataset = nncf.Dataset([{"x": x[i:i + 1]} for i in range(len(x))])
onnx.save(nncf.quantize(model, dataset), target)  # every option at NNCF's default
print("nncf", nncf.__version__)
"""


def build_models():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip = (
                nn.Identity()
                if stride == 1 and cin == cout
                else nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )
            )

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    torch.manual_seed(0)
    resnet = nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Block(32, 32, 1),
        Block(32, 64, 2),
        Block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    # ResNet-18 for 3x32x32 (CIFAR stem: 3x3 conv, no max-pool), the reference model
    stages, cin = [], 64
    for index, cout in enumerate((64, 128, 256, 512)):
        stride = 1 if index == 0 else 2
        stages += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    resnet18 = nn.Sequential(
        nn.Conv2d(3, 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 10),
    )
    mlp = nn.Sequential(
        nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    models = [
        ("digits ResNet (trained, bundled)", _bundled("digits_resnet"), [1, 8, 8], "static"),
        ("resnet-ish CNN", resnet.eval(), [3, 32, 32], "static"),
        ("ResNet-18 (3x32x32)", resnet18.eval(), [3, 32, 32], "static"),
        ("MLP 512-1024-1024-10", mlp.eval(), [512], "static"),
    ]
    for width, ff, tokens in ((128, 256, 32), (256, 1024, 64), (512, 2048, 64)):
        layer = nn.TransformerEncoderLayer(width, 4, ff, dropout=0.0, batch_first=True)
        encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        models.append(
            (
                f"transformer encoder (2x d{width}, ff{ff}, seq {tokens})",
                encoder.eval(),
                [tokens, width],
                "dynamic",
            )
        )
    return models


def _bundled(name: str):
    from mcomp.model.load import load_model
    from mcomp.recipe.schema import ModelSpec

    return load_model(ModelSpec(builtin=name), base_dir=REPO).module.eval()


def model_data(name: str, shape: list[int], rng) -> tuple:
    """(calibration, timing batch, evaluation inputs, labels or None) for one model: the
    bundled digits splits for the trained digits model (128 calibration samples from train,
    the 360 held-out eval digits with their labels), random inputs for the others."""
    if name.startswith("digits"):
        from mcomp.data.load import load_datasets
        from mcomp.recipe.schema import DataSpec

        digits = load_datasets(
            DataSpec(train="digits", eval="digits", calibration_samples=128), base_dir=REPO, seed=0
        )
        x = digits.eval.inputs["x"]
        return digits.calibration.inputs["x"], x[:64], x, digits.eval.labels
    calib = rng.normal(size=(128, *shape)).astype(np.float32)
    x = rng.normal(size=(64, *shape)).astype(np.float32)
    return calib, x, rng.normal(size=(EVAL_SAMPLES, *shape)).astype(np.float32), None


def mcomp_quantize(fp32, calib: np.ndarray, mode: str, workdir: Path, threads: int, **options):
    from mcomp.compressors.quantize.core import quantize_model
    from mcomp.compressors.quantize.options import QuantizeOptions
    from mcomp.data.load import Datasets, Split
    from mcomp.model.state import ModelState
    from mcomp.progress import NullProgress
    from mcomp.recipe.schema import InputSpec
    from mcomp.stage import StageContext

    split = Split("calibration", {"x": calib}, None)
    state = ModelState.from_onnx(fp32, [InputSpec(name="x", shape=list(calib.shape[1:]))])
    ctx = StageContext(
        datasets=Datasets(None, split, split),
        seed=0,
        threads=threads,
        metric=None,
        task=None,
        batch_size=32,
        original=state,
        workdir=workdir,
        progress=NullProgress(),
    )
    # no accuracy budget here (ctx.accuracy_budget None): no fallback, no metric needed
    result = quantize_model(state, QuantizeOptions(mode=mode, **options), ctx)
    return result.model, result.details


def plain_ort_quantize(fp32, calib: np.ndarray, workdir: Path):
    import onnx
    from onnxruntime.quantization import quantize_static

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{"x": calib[i : i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    source, target = workdir / "plain_fp32.onnx", workdir / "plain_int8.onnx"
    onnx.save(fp32, source)
    cwd = os.getcwd()
    os.chdir(workdir)  # ORT writes helper files into the current directory
    try:
        quantize_static(str(source), str(target), Reader())  # every option at ORT's default
    finally:
        os.chdir(cwd)
    return onnx.load(str(target))


def nncf_python() -> Path:
    """The interpreter of NNCF's own venv, created (nncf, onnx, onnxruntime) when missing."""
    python = NNCF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(NNCF_VENV)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import nncf, onnx, onnxruntime"], capture_output=True
    )
    if probe.returncode:
        # nncf's ONNX backend needs no torch; the check below makes sure none was pulled in
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "nncf", "onnx", "onnxruntime"], check=True
        )
    torch_in = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    if torch_in.returncode == 0:
        sys.stderr.write(f"note: {NNCF_VENV} has torch installed\n")
    return python


def nncf_quantize(fp32, calib: np.ndarray, workdir: Path):
    """NNCF's default post-training quantization of `fp32`, run in NNCF's own venv."""
    import onnx

    source, samples = workdir / "nncf_fp32.onnx", workdir / "nncf_calib.npz"
    target, script = workdir / "nncf_int8.onnx", workdir / "nncf_ptq.py"
    onnx.save(fp32, source)
    np.savez(samples, x=calib)
    script.write_text(NNCF_SCRIPT)
    done = subprocess.run(
        [str(nncf_python()), str(script), str(source), str(samples), str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"nncf.quantize failed:\n{done.stderr[-3000:]}")
    version = [ln for ln in done.stdout.splitlines() if ln.startswith("nncf ")]
    return onnx.load(str(target)), (version[-1].split()[1] if version else "?")


def measure(
    fp32_bytes: bytes,
    variants: dict[str, bytes],
    x: np.ndarray,
    evaluation: np.ndarray,
    threads: int,
    labels: np.ndarray | None = None,
):
    from mcomp.measure.ort_session import batch_feed, create_session, time_session

    models = {"fp32": fp32_bytes, **variants}
    # fp32 with onnxruntime's SkipLayerNormFusion off: measured here (onnxruntime 1.32, 1
    # thread), the fused SkipLayerNormalization kernel made the fp32 encoders 1.1x (d256) to
    # 1.4x (d128) slower than Add + LayerNormalization, so this is the fairer baseline; int8
    # static models have no such fusion (their Adds are QLinearAdd)
    sessions = {
        label: create_session(b, threads, ["SkipLayerNormFusion"] if label == NO_SLN else None)
        for label, b in models.items()
    }
    reference = np.concatenate(
        [
            sessions["fp32"].run(None, {"x": evaluation[i : i + 64]})[0]
            for i in range(0, len(evaluation), 64)
        ]
    )
    ref_top = reference.reshape(len(reference), -1).argmax(axis=1)
    feeds = {batch: batch_feed({"x": x}, batch) for batch in (1, 64)}
    per_round = {label: {1: [], 64: []} for label in models}
    # at least 40 (b1) / 10 (b64) runs, more for fast models: about 0.25 s of fp32 per block
    runs = {}
    for batch, least in ((1, 40), (64, 10)):
        fp32_ms = time_session(sessions["fp32"], feeds[batch], warmup=3, runs=5)
        runs[batch] = max(least, min(400, int(250 / max(fp32_ms, 1e-3))))
    names = list(models)
    for r in range(ROUNDS):
        order = names[r % len(names) :] + names[: r % len(names)]
        for label in order:  # each session in its own block
            for batch in (1, 64):
                per_round[label][batch].append(
                    time_session(sessions[label], feeds[batch], warmup=3, runs=runs[batch])
                )
                time.sleep(0.1)
            time.sleep(0.2)
    rows = {}
    for label, model_bytes in models.items():
        out = np.concatenate(
            [
                sessions[label].run(None, {"x": evaluation[i : i + 64]})[0]
                for i in range(0, len(evaluation), 64)
            ]
        )
        rel = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        predicted = out.reshape(len(out), -1).argmax(axis=1)
        agree = predicted == ref_top
        # per-sample vectors for the paired test in `verdict`: agreement with fp32's argmax,
        # and correctness against the labels where the data has them
        correct = predicted == labels if labels is not None else None
        rows[label] = {
            "bytes": len(model_bytes),
            "rel": rel,
            "top1": float(agree.mean()),
            "agree": agree,
            "correct": correct,
            "acc": float(correct.mean()) if correct is not None else None,
            **{f"b{b}": min(per_round[label][b]) for b in (1, 64)},
        }
    return rows, runs


def run(threads: int, with_nncf: bool, only: str | None = None) -> tuple[list[str], list[str]]:
    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    lines = [
        "| model | variant | size KiB | b1 ms | b64 ms | fp32/int8 b1 | fp32/int8 b64 | "
        "rel. L2 error | top-1 agree | accuracy (labels) | int8 MACs share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    verdicts: list[str] = []
    targets: list[dict] = []
    rng = np.random.default_rng(0)
    for name, module, shape, mode in build_models():
        if only and only.lower() not in name.lower():
            continue
        state = ModelState.from_torch(module, [InputSpec(name="x", shape=shape)])
        fp32 = torch_to_onnx(state)
        calib, x, evaluation, labels = model_data(name, shape, rng)
        model_notes: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            int8, details = mcomp_quantize(fp32, calib, mode, Path(tmp), threads)
            variants = {f"mcomp {mode}": int8.SerializeToString()}
            shares = {f"mcomp {mode}": details["int8_macs_share"]}
            if mode == "static" and ("CNN" in name or "ResNet" in name):
                plain = plain_ort_quantize(fp32, calib, Path(tmp))
                variants["plain quantize_static (ORT defaults)"] = plain.SerializeToString()
                shares["plain quantize_static (ORT defaults)"] = _share(plain, threads, tmp)
            if mode == "static" and with_nncf:
                try:
                    quantized, version = nncf_quantize(fp32, calib, Path(tmp))
                except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
                    model_notes.append(f"{name}: NNCF failed: {str(error).strip()[-400:]}")
                else:
                    label = f"NNCF {version} nncf.quantize (defaults)"
                    variants[label] = quantized.SerializeToString()
                    shares[label] = _share(quantized, threads, tmp)
            if name.startswith("MLP"):  # what `mode: auto` gives an MLP
                dynamic, dynamic_details = mcomp_quantize(
                    fp32, calib, "dynamic", Path(tmp), threads
                )
                variants["mcomp dynamic"] = dynamic.SerializeToString()
                shares["mcomp dynamic"] = dynamic_details["int8_macs_share"]
            if mode == "dynamic":
                variants[NO_SLN] = fp32.SerializeToString()
                for label, options in (
                    ("mcomp static", {}),
                    ("mcomp static, float_attention: false", {"float_attention": False}),
                    (MATMUL_ONLY, {"op_types": ["MatMul", "Gemm"]}),
                ):
                    static, static_details = mcomp_quantize(
                        fp32, calib, "static", Path(tmp), threads, **options
                    )
                    variants[label] = static.SerializeToString()
                    shares[label] = static_details["int8_macs_share"]
                    model_notes.append(
                        f"{name} ({label}): int8 compute nodes "
                        f"{static_details['int8_compute_nodes']}, float compute nodes "
                        f"{static_details['float_compute_nodes']}"
                    )
            rows, runs = measure(fp32.SerializeToString(), variants, x, evaluation, threads, labels)
            if mode == "dynamic":
                model_notes.extend(
                    float_bounds(name, fp32.SerializeToString(), variants, x, threads)
                )
        base = rows["fp32"]
        for label, row in rows.items():
            lines.append(
                f"| {name} | {label} | {row['bytes'] / 1024:.0f} | {row['b1']:.3f} | "
                f"{row['b64']:.2f} | {base['b1'] / row['b1']:.2f} | {base['b64'] / row['b64']:.2f}"
                f" | {row['rel']:.2e} | {row['top1']:.3f} | "
                f"{'-' if row['acc'] is None else format(row['acc'], '.4f')} | "
                f"{shares.get(label, '-')} |"
            )
        notes.append(
            f"{name} (mcomp {mode}): int8 compute nodes "
            f"{details['int8_compute_nodes']}, float compute nodes "
            f"{details['float_compute_nodes']}; timed runs per block b1 {runs[1]}, "
            f"b64 {runs[64]}"
        )
        notes.extend(model_notes)
        verdicts.extend(verdict(name, f"mcomp {mode}", rows))
        if mode == "dynamic":
            verdicts.extend(transformer_verdicts(name, rows))
        if not name.startswith("digits"):
            targets.extend(target_rows(name, f"mcomp {auto_mode(fp32)}", rows))
    return lines + [""] + targets_table(targets), notes + verdicts


SPEED_TARGET, SIZE_TARGET = 2.5, 3.9
KINDS = (
    ("convolutional", ("CNN", "ResNet")),
    ("MLP", ("MLP",)),
    ("small transformer encoder", ("transformer",)),
)


def auto_mode(fp32) -> str:
    """The mode `mode: auto` picks for this model (static for conv nets, else dynamic)."""
    from mcomp.compressors.quantize.selection import resolve_mode

    return resolve_mode(fp32, "auto")[0]


def target_rows(name: str, auto: str, rows: dict) -> list[dict]:
    """The issue's targets (int8 >= 2.5x fp32 at batch 64, >= 3.9x smaller) for each of
    mcomp's int8 variants of one model; `auto` is the variant `mode: auto` gives."""
    base = rows["fp32"]
    kind = next(kind for kind, words in KINDS if any(word in name for word in words))
    return [
        {
            "kind": kind,
            "model": name,
            "variant": label + (" (mode: auto's choice)" if label == auto else ""),
            "speedup": base["b64"] / row["b64"],
            "smaller": base["bytes"] / row["bytes"],
        }
        for label, row in rows.items()
        if label.startswith("mcomp")
    ]


def targets_table(targets: list[dict]) -> list[str]:
    """Every mcomp int8 variant against both targets, then, for each kind of model the issue
    names (a convolutional model, an MLP, a small transformer encoder), which ones meet both."""
    if not targets:
        return []
    mark = {True: "holds", False: "FAILS"}
    out = [
        f"Targets: int8 >= {SPEED_TARGET}x fp32 at batch 64 and >= {SIZE_TARGET}x smaller "
        "(fp32 at onnxruntime's default session options).",
        "",
        "| kind | model | mcomp int8 variant | fp32/int8 b64 | smaller | speed target | "
        "size target |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        # three decimals: a ratio that fails by 0.001 must not print as the target itself
        out.append(
            f"| {t['kind']} | {t['model']} | {t['variant']} | {t['speedup']:.3f}x | "
            f"{t['smaller']:.3f}x | {mark[t['speedup'] >= SPEED_TARGET]} | "
            f"{mark[t['smaller'] >= SIZE_TARGET]} |"
        )
    out.append("")
    for kind, _ in KINDS:
        rows = [t for t in targets if t["kind"] == kind]
        if not rows:
            continue
        both = [t for t in rows if t["speedup"] >= SPEED_TARGET and t["smaller"] >= SIZE_TARGET]
        text = (
            "; ".join(
                f"{t['model']}, {t['variant']} ({t['speedup']:.3f}x, {t['smaller']:.3f}x smaller)"
                for t in both
            )
            or "none"
        )
        out.append(
            f"- **{kind}: both targets hold for {len(both)} of the {len(rows)} "
            f"model/variant pairs**: {text}"
        )
    return out


def verdict(name: str, ours: str, rows: dict) -> list[str]:
    """Plain statements: mcomp's default against each rival (the targets are in
    `targets_table`)."""
    base, me = rows["fp32"], rows[ours]
    out = []
    if name.startswith("digits"):
        out = [
            f"{name}: the task-metric comparison (held-out labels); at 45K parameters it is "
            f"too small for the speed and size targets ({base['b64'] / me['b64']:.2f}x, "
            f"{base['bytes'] / me['bytes']:.2f}x)"
        ]
    for label, row in rows.items():
        if label.startswith("fp32") or label == ours:
            continue
        top1 = paired_test(me["agree"], row["agree"])
        checks = {
            "rel. error": me["rel"] <= row["rel"],
            "top-1": not top1["worse"],
            "b1 speed": me["b1"] <= row["b1"] * (1 + TIE),
            "b64 speed": me["b64"] <= row["b64"] * (1 + TIE),
        }
        accuracy = ""
        if me["correct"] is not None:
            task = paired_test(me["correct"], row["correct"])
            checks["accuracy"] = not task["worse"]
            accuracy = f", accuracy {me['acc']:.4f} vs {row['acc']:.4f} ({task['text']})"
        lost = [k for k, ok in checks.items() if not ok]
        out.append(
            f"{name}: {ours} vs {label}: "
            + (
                f"at least as accurate and as fast (speed within {TIE:.0%} counts as a tie;"
                " top-1/accuracy: not significantly worse, paired exact test)"
                if not lost
                else "loses on " + ", ".join(lost)
            )
            + f" (error {me['rel']:.2e} vs {row['rel']:.2e}, top-1 {me['top1']:.3f} vs "
            f"{row['top1']:.3f} ({top1['text']}){accuracy}, b1 {me['b1']:.3f} vs "
            f"{row['b1']:.3f} ms, b64 {me['b64']:.2f} vs {row['b64']:.2f} ms)"
        )
    return out


def paired_test(ours: np.ndarray, theirs: np.ndarray, alpha: float = 0.05) -> dict:
    """Exact McNemar test on two per-sample hit vectors (same samples): only the samples
    where exactly one of the two is right carry information. `worse` is true when ours has
    fewer hits and the two-sided p-value is below `alpha`; a difference of 3 samples in 1024
    is not evidence that one quantizer is less accurate."""
    from math import comb

    only_ours = int(np.sum(ours & ~theirs))
    only_theirs = int(np.sum(~ours & theirs))
    n, k = only_ours + only_theirs, min(only_ours, only_theirs)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {
        "worse": only_theirs > only_ours and p < alpha,
        "text": f"{only_ours} vs {only_theirs} samples only one gets right, p={p:.2f}",
    }


def transformer_verdicts(name: str, rows: dict) -> list[str]:
    """The 2.5x target for each int8 variant against both fp32 baselines."""
    out = []
    for label, row in rows.items():
        if not label.startswith("mcomp"):
            continue
        default, fair = rows["fp32"]["b64"] / row["b64"], rows[NO_SLN]["b64"] / row["b64"]
        out.append(
            f"{name}: {label}: {default:.2f}x fp32 at b64 ({fair:.2f}x fp32 with "
            f"SkipLayerNormFusion off): target "
            f"{'HOLDS' if default >= SPEED_TARGET else 'FAILS'} against fp32 at ORT's "
            f"defaults, {'HOLDS' if fair >= SPEED_TARGET else 'FAILS'} "
            "against the faster fp32"
        )
    return out


def float_bounds(
    name: str, fp32_bytes: bytes, variants: dict[str, bytes], x: np.ndarray, threads: int
) -> list[str]:
    """Amdahl's bound for each int8 variant of a transformer: the time its graph still
    spends outside int8 kernels (float LayerNorm, Softmax, Transpose, Q/DQ, ...) caps its
    speed-up, however fast the int8 MatMuls are. Shows whether the 2.5x target is reachable
    at all with onnxruntime's kernels for this model."""
    from mcomp.measure.ort_profile import op_times, time_split

    feed = {"x": x}
    base = op_times(fp32_bytes, feed, threads, runs=10, warmup=3)
    fair = op_times(
        fp32_bytes, feed, threads, runs=10, warmup=3, disabled_optimizers=["SkipLayerNormFusion"]
    )
    fair_ms = sum(fair.values())
    out = [
        f"{name}: profiled fp32 kernel time at b64 {sum(base.values()):.1f} ms "
        f"({fair_ms:.1f} ms with SkipLayerNormFusion off); largest: "
        + ", ".join(
            f"{op} {ms:.1f}" for op, ms in sorted(base.items(), key=lambda item: -item[1])[:4]
        )
    ]
    for label, model_bytes in variants.items():
        if not label.startswith("mcomp"):
            continue
        times = op_times(model_bytes, feed, threads, runs=10, warmup=3)
        split = time_split(times, base)  # the quantize stage's `details.time_split`
        rest = split["other_ms"]
        out.append(
            f"{name} ({label}): {rest:.1f} of {sum(times.values()):.1f} ms outside int8 kernels"
            " (largest: "
            + ", ".join(f"{op} {ms:.1f}" for op, ms in split["largest_other_ops_ms"].items())
            + f"); even with free int8 kernels it could run at most {split['speedup_bound']:.2f}x"
            f" fp32 ({fair_ms / rest:.2f}x the faster fp32)"
        )
    return out


def _share(model, threads: int, tmp: str) -> float:
    from mcomp.compressors.quantize.int8_check import count_compute_nodes, save_optimized_graph

    optimized = save_optimized_graph(
        model.SerializeToString(), Path(tmp) / "plain.opt.onnx", threads
    )
    return count_compute_nodes(optimized, [model])["int8_macs_share"]


def section(threads: int, lines: list[str], notes: list[str], load: tuple, with_nncf: bool) -> str:
    import onnxruntime
    import torch

    from mcomp.measure.cpu_features import cpu_features

    command = f"python benchmarks/bench_int8.py --threads {threads}" + (
        " --nncf" if with_nncf else ""
    )
    head = [
        heading(threads),
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%a %b %d %H:%M:%S UTC %Y}",
        f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; ISA: "
        f"{', '.join(cpu_features())}; threads {threads}",
        f"- Load average (1 min) start {load[0]:.2f}, end {os.getloadavg()[0]:.2f} "
        "(shared machine: absolute ms are noisy, compare ratios within a row group)",
        f"- python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}",
        "",
        "fp32/int8 > 1 means int8 is faster. ms: the lowest over "
        f"{ROUNDS} rounds (variants in rotating order, each session in its own block) of "
        "the median of N runs (N in the notes: at least 40 at b1 / 10 at b64, more for fast "
        "models). Relative L2 error: ||y_int8 - y_fp32|| / ||y_fp32|| on "
        f"{EVAL_SAMPLES} random inputs (random weights, calibration on 128 other random "
        "inputs); top-1 agree: share of those inputs whose argmax matches fp32's (the "
        "task-metric proxy, there being no labels). The digits ResNet is the bundled "
        "trained model: calibration on 128 train digits, error, agreement and accuracy "
        "(against the labels) on the 360 held-out eval digits. Comparisons of top-1 and "
        "accuracy use an exact paired (McNemar) test on the samples where exactly one of "
        "the two models is right. int8 MACs share: from the graph onnxruntime runs "
        "(mcomp.compressors.quantize.int8_check).",
        "",
    ]
    return "\n".join(head + lines + [""] + [f"- {n}" for n in notes]) + "\n"


def heading(threads: int) -> str:
    return HEADING if threads == 1 else f"{HEADING} (threads={threads})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--nncf",
        action="store_true",
        help="also quantize with NNCF (nncf.quantize, in its own venv)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="only the models whose name contains TEXT (e.g. d128, digits); "
        "the section is printed, the results file is left as it is",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    lines, notes = run(args.threads, args.nncf, args.only)
    text = section(args.threads, lines, notes, load, args.nncf)
    sys.stdout.write(text)
    if not args.only:
        update_results(args.out, text)


if __name__ == "__main__":
    main()
