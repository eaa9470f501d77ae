"""Does the fallback's cheap sensitivity ranking agree with the full metric? (Spearman)

    python benchmarks/real/ranking.py [--model ppocr_cls] [--nodes 24] [--threads 1]

For one real model (ONNX models of models.py; the inputs are the benchmark's cached ones, so
run run.py once first): onnxruntime's pre-processing, then a static QDQ int8 model with
mcomp's defaults on this CPU (uint8 activations and weights, per-channel, outputs float).
For each of the `--nodes` quantized compute nodes with the largest local error it measures

- `local`: the node's own error (its output's relative error minus its inputs' largest, on
  32 calibration samples: what the fallback ranks every node by first);
- `output`: the output error (KL / 1 - cosine) with that node alone int8, on 32
  calibration samples (what the fallback refines the top of the ranking with);
- `full`: the loss on the whole eval split with that node alone int8 (KL to fp32 for
  classifiers, relative L2 error else),

and prints Spearman's rank correlation of `local` and `output` against `full`. Fidelity is
to the fp32 model, so no labels are needed. Nothing is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]

import models  # noqa: E402

CACHE = Path.home() / ".cache" / "mcomp-bench"
SAMPLES = 32


def _inputs(model, split: str) -> np.ndarray:
    found = sorted(
        (CACHE / "inputs").glob(f"{model.builder}-{split}-*.npz"),
        key=lambda p: int(p.stem.split("-")[-1]),
    )
    if not found:
        raise SystemExit(f"no cached {split} inputs for {model.name}: run benchmarks/real/run.py")
    return np.load(found[-1])["x"]


def _quantized(source: Path, calibration: np.ndarray, folder: Path):
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mcomp.compressors.quantize.prepare import (
        keep_outputs_float,
        upgrade_opset,
        working_directory,
    )

    fp32 = folder / "fp32.onnx"
    onnx.save(upgrade_opset(onnx.load(str(source))), fp32)
    prepared = folder / "prepared.onnx"
    with working_directory(folder):
        try:
            quant_pre_process(str(fp32), str(prepared))
        except Exception:  # noqa: BLE001 - the same fallback as the quantize stage
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    name = onnx.load(str(prepared)).graph.input[0].name

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{name: calibration[i : i + 8]} for i in range(0, 64, 8)])

        def get_next(self):
            return next(self.batches, None)

    target = folder / "int8.onnx"
    with working_directory(folder):
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
        )
    int8 = onnx.load(str(target))
    keep_outputs_float(int8)  # as mcomp's stage does: rounded logits would swamp every node
    return onnx.load(str(prepared)), int8, name


def _run(model, name: str, x: np.ndarray, threads: int) -> np.ndarray:
    from mcomp.measure.ort_session import create_session

    session = create_session(model.SerializeToString(), threads)
    return np.concatenate(
        [session.run(None, {name: x[i : i + 16]})[0] for i in range(0, len(x), 16)]
    )


def _loss(reference: np.ndarray, outputs: np.ndarray, classification: bool) -> float:
    """A continuous loss (with one node int8, a share such as top-1 agreement is 1.0 for
    most nodes and ranks nothing): the benchmark's KL for classifiers, else the relative L2
    error."""
    from metrics import classifier, map_error

    if not classification:
        return map_error(reference, outputs)["rel_l2"]
    return classifier(reference, outputs)["kl"]


def main() -> None:
    from mcomp.compressors.quantize.float_nodes import quantized_nodes, with_nodes_in_float
    from mcomp.compressors.quantize.float_search import spearman
    from mcomp.compressors.quantize.sensitivity import local_errors, rank_by_output

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ppocr_cls")
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model = next(m for m in models.MODELS if m.name == args.model)
    if model.kind != "onnx":
        raise SystemExit(f"{model.name} is a torch model; pick an ONNX one")
    calibration, evaluation = _inputs(model, "calibration"), _inputs(model, "eval")
    with tempfile.TemporaryDirectory() as scratch:
        fp32, int8, name = _quantized(CACHE / "files" / model.source, calibration, Path(scratch))
    feed = {name: calibration[:SAMPLES]}
    compute = quantized_nodes(int8, compute_only=True)
    tensors = {out for node in fp32.graph.node for out in node.output}
    errors = local_errors(fp32, int8, tensors, feed, args.threads)
    errors[name] = 0.0
    nodes = {node.name: node for node in fp32.graph.node}
    local = {
        n: max((errors.get(o, 0.0) for o in nodes[n].output), default=0.0)
        - max((errors.get(i, 0.0) for i in nodes[n].input if i in errors), default=0.0)
        for n in compute
        if n in nodes
    }
    chosen = sorted(local, key=lambda n: -local[n])[: args.nodes]
    classification = model.task == "classification"
    output = dict(
        rank_by_output(
            int8, fp32, chosen, feed, threads=args.threads, classification=classification
        )
    )
    reference = _run(fp32, name, evaluation, args.threads)
    everything = set(quantized_nodes(int8))
    full = {}
    for node in chosen:
        alone = with_nodes_in_float(int8, fp32, everything - {node})
        full[node] = _loss(reference, _run(alone, name, evaluation, args.threads), classification)
    print(f"{model.name}: {len(chosen)} of {len(compute)} quantized compute nodes")
    print("| node | local error | output error (32 cal.) | full loss (eval) |")
    print("|---|---|---|---|")
    for node in sorted(chosen, key=lambda n: -full[n]):
        print(f"| {node} | {local[node]:.4f} | {output[node]:.3g} | {full[node]:.4g} |")
    by_full = [full[n] for n in chosen]
    print(f"Spearman local vs full: {spearman([local[n] for n in chosen], by_full)}")
    print(f"Spearman output vs full: {spearman([output[n] for n in chosen], by_full)}")


if __name__ == "__main__":
    main()
