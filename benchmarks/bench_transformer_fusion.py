"""onnxruntime's transformer fusions before int8 (`quantize.transformer_fusion`), measured.

    python benchmarks/bench_transformer_fusion.py [--threads 1] [--out benchmarks/RESULTS.md]

A BERT encoder the size of a MiniLM-L6 sentence-embedding model (6 layers, 384 wide, 12
heads, feed-forward 1536, 22.7 M parameters) is built by `transformers` from a config (random
weights: no hub here, and no pretrained transformer ships in a wheel; fusions are
function-preserving rewrites, so the speed figures do not depend on the weights and the error
columns only check that nothing changed), exported by mcomp's exporter with its attention
mask as a second input, and quantized by mcomp's quantize stage in dynamic and static mode with
`transformer_fusion: auto` (the default) and `false`, on 64 calibration sequences of 24-128
tokens padded to 128. Reported side by side in one process: which ops were fused, the stage's
seconds, output error to fp32 on 64 other sequences (relative L2 over real tokens and mean
cosine of mean-pooled embeddings), and latency at batch 1 and 16 (each session in its own
block, rounds interleaved, speed-up = median of per-round fp32/int8 ratios).

Also measured, once per model: how many `Attention` nodes onnxruntime's optimizer fuses on
the export (what dynamic mode would turn into int8 `QAttention`).

Needs `transformers` (the `mcomp[hf]` extra). The section it prints replaces
`## Transformer fusion before int8` in the results file, or is appended.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import update_results  # benchmarks/ is the script's folder

HEADING = "## Transformer fusion before int8"
SEQ = 128
CONFIG = dict(
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
)


def build_onnx(folder: Path, attention: str):
    """The encoder (last hidden state) as fp32 ONNX from mcomp's exporter."""
    import torch
    from transformers import BertConfig, BertModel

    from mcomp.model.convert import torch_to_onnx
    from mcomp.model.state import ModelState
    from mcomp.recipe.schema import InputSpec

    torch.manual_seed(0)
    config = BertConfig(**CONFIG)
    config._attn_implementation = attention  # "sdpa" (transformers' default) or "eager"
    bert = BertModel(config).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    specs = [
        InputSpec(name="input_ids", shape=[SEQ], dtype="int64"),
        InputSpec(name="attention_mask", shape=[SEQ], dtype="int64"),
    ]
    state = ModelState.from_torch(Encoder().eval(), specs)
    return state, torch_to_onnx(state), sum(p.numel() for p in bert.parameters())


def tokens(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    ids = rng.integers(1000, 20000, size=(count, SEQ)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, length in enumerate(rng.integers(24, SEQ + 1, size=count)):
        mask[row, length:], ids[row, length:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def quantize(state, fp32, calibration, workdir: Path, threads: int, **options):
    from mcomp.compressors.quantize.core import quantize_model
    from mcomp.compressors.quantize.options import QuantizeOptions
    from mcomp.data.load import Datasets, Split
    from mcomp.model.state import ModelState
    from mcomp.progress import NullProgress
    from mcomp.stage import StageContext

    onnx_state = ModelState.from_onnx(fp32, state.inputs)
    split = Split("calibration", calibration, None)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        datasets=Datasets(None, split, split),
        seed=0,
        threads=threads,
        metric=None,
        task=None,
        batch_size=16,
        original=onnx_state,
        workdir=workdir,
        progress=NullProgress(),
    )
    started = time.perf_counter()
    result = quantize_model(onnx_state, QuantizeOptions(**options), ctx)
    return result.model, result.details, time.perf_counter() - started


def attention_fusions(fp32) -> int:
    """Attention nodes onnxruntime's optimizer fuses with every fusion on (its defaults)."""
    import onnx
    from onnxruntime.transformers import optimizer

    copy = onnx.ModelProto()
    copy.CopyFrom(fp32)  # the optimizer edits the graph it is given
    fused = optimizer.optimize_model(copy, model_type="bert", opt_level=0)
    return sum(node.op_type == "Attention" for node in fused.model.graph.node)


def errors(reference: np.ndarray, got: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    real = mask.astype(bool)
    a, b = reference[real], got[real]
    relative = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    pa, pb = (reference * mask[..., None]).sum(1), (got * mask[..., None]).sum(1)
    cosine = (pa * pb).sum(1) / np.linalg.norm(pa, axis=1) / np.linalg.norm(pb, axis=1)
    return relative, float(cosine.mean())


def latencies(sessions: dict, feed: dict, rounds: int, block: float) -> dict[str, tuple]:
    """{label: (median ms, median per-round fp32/label ratio)}; rounds interleave labels."""
    times = {label: [] for label in sessions}
    for _ in range(rounds):
        for label, session in sessions.items():
            session.run(None, feed)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < block:
                session.run(None, feed)
                count += 1
            times[label].append((time.perf_counter() - start) / count * 1000)
    base = np.array(times["fp32"])
    return {
        label: (float(np.median(t)), float(np.median(base / np.array(t))))
        for label, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ["MCOMP_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from mcomp.measure.ort_session import create_session

    load_start = os.getloadavg()
    rng = np.random.default_rng(0)
    calibration, evaluation = tokens(rng, 64), tokens(rng, 64)
    rows, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        state, fp32, parameters = build_onnx(Path(tmp), args.attention)
        fused_attention = attention_fusions(fp32)
        models["fp32"] = fp32
        for mode in ("dynamic", "static"):
            for setting in ("auto", False):
                label = f"{mode}, fusion {'auto' if setting == 'auto' else 'off'}"
                print(f"== {label}", file=sys.stderr, flush=True)
                model, details, seconds = quantize(
                    state, fp32, calibration, Path(tmp) / label.replace(", ", "-"),
                    args.threads, mode=mode, transformer_fusion=setting,
                )  # fmt: skip
                models[label] = model
                facts = details.get("transformer_fusion") or {}
                fused = ", ".join(f"{n} {op}" for op, n in (facts.get("fused") or {}).items())
                rows.append((label, fused if facts.get("applied") else "-", seconds))
        sessions = {
            label: create_session(model.SerializeToString(), args.threads)
            for label, model in models.items()
        }
        reference = sessions["fp32"].run(None, evaluation)[0]
        error = {
            label: errors(reference, session.run(None, evaluation)[0],
                          evaluation["attention_mask"])
            for label, session in sessions.items()
        }  # fmt: skip
        timing = {
            batch: latencies(
                sessions, {k: v[:batch] for k, v in evaluation.items()}, args.rounds, 0.4
            )
            for batch in (1, 16)
        }
    load_end = os.getloadavg()
    lines = [
        HEADING,
        "",
        f"`python benchmarks/bench_transformer_fusion.py --threads {args.threads} --rounds "
        f"{args.rounds} --attention {args.attention}` — {datetime.date.today().isoformat()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"(1/5/15 min) start {' '.join(f'{x:.2f}' for x in load_start)}, end "
        f"{' '.join(f'{x:.2f}' for x in load_end)}; onnxruntime CPU, {args.threads} thread(s).",
        "",
        f"BERT encoder, {parameters / 1e6:.1f} M parameters (MiniLM-L6's shape, random "
        f"weights), sequences of {SEQ} with 24-{SEQ} real tokens; transformers' "
        f"`{args.attention}` attention. Attention nodes onnxruntime's optimizer fuses on this "
        f"export: {fused_attention}.",
        "",
        "| variant | fused before int8 | stage s | rel. L2 to fp32 | pooled cosine | "
        "b1 ms (fp32/x) | b16 ms (fp32/x) |",
        "|---|---|---|---|---|---|---|",
    ]
    stage = {label: (fused, seconds) for label, fused, seconds in rows}
    for label in models:
        fused, seconds = stage.get(label, ("", None))
        relative, cosine = error[label]
        cells = [f"{timing[b][label][0]:.1f} ({timing[b][label][1]:.2f}x)" for b in (1, 16)]
        lines.append(
            f"| {label} | {fused} | {'' if seconds is None else f'{seconds:.1f}'} | "
            f"{relative:.4f} | {cosine:.5f} | {' | '.join(cells)} |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    if args.out is not None:
        update_results(args.out, section)


if __name__ == "__main__":
    main()
