"""int8 on real pretrained models: mcomp's defaults against plain onnxruntime and NNCF.

    python benchmarks/real/run.py [--only NAME] [--nncf/--no-nncf] [--threads 1] [--quick]
                                  [--json OUT.json] [--results benchmarks/RESULTS.md]
                                  [--budget/--no-budget]

Models (models.py): PP-OCRv4 text detector, recogniser and direction classifier
(rapidocr-onnxruntime's ONNX files), easyocr's english_g2 recogniser and CRAFT detector
(state dicts, rebuilt in easyocr_nets.py), MTCNN's RNet and ONet (facenet-pytorch), and
basic-pitch (ONNX). Inputs (inputs.py, render.py): rendered text lines and text scenes on
photo crops, photo/face crops, tones, chords and speech with noise, all made locally and
seeded, calibration and evaluation sets disjoint.

Why: random-weight models flatter every quantizer (FIELD.md); these show how mcomp's
`quantize: {mode: auto}` does on real weights and inputs, against what a user would
otherwise run: onnxruntime's own quantizers and NNCF. Every variant quantizes the same
fp32 ONNX graph (for the torch models: the one mcomp exports) on the same calibration
samples, and all are evaluated on the same samples and timed side by side in one process.
Fidelity is to the fp32 model (metrics.py), so no labels are needed.

`--quick` uses few samples and timing rounds, for development iterations; it prints the
tables and writes `--json` but leaves RESULTS.md alone, as does `--only`. A full run
writes the section `## real models: int8 (threads=N)` of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this folder's modules, benchmarks/results_file

import fetch  # noqa: E402
import inputs  # noqa: E402
import measure  # noqa: E402
import models  # noqa: E402
import report  # noqa: E402
import variants  # noqa: E402
from results_file import update_results  # noqa: E402

REPO = HERE.parent.parent


def make_variants(model, source: Path, data: dict, workdir: Path, args) -> dict:
    """{label: {"path": file or None, "seconds": quantize time, "notes": [...]}}"""
    import numpy as np

    fp32 = source
    if model.kind == "torch":
        export = variants.mcomp_export(model, source, data, workdir)
        if export["exit_code"]:
            raise RuntimeError(f"mcomp export failed: {export['stderr'][-600:]}")
        fp32 = export["model"]
    found = {"fp32": {"path": fp32, "seconds": None, "notes": []}}
    calibration = np.load(data["calibration"])["x"]
    found.update(_ort(fp32, calibration, workdir))
    if args.nncf:
        found.update(_nncf(model, fp32, calibration, workdir, args.threads))
    found.update(_mcomp(model, source, data, workdir, args.budget))
    if any(found[k].get("exit_code") for k in found if k.startswith("mcomp")) and (
        model.kind == "onnx" and _opset(source) < 13
    ):
        # what a user does after mcomp refuses an old-opset graph: convert it and retry;
        # measured too, so the lead sees mcomp's quantizer on these weights meanwhile
        copy = variants.to_opset_13(source, workdir)
        runs = _mcomp(model, copy, data, workdir / "opset13-copy", args.budget)
        found.update({f"{label} [opset-13 copy]": entry for label, entry in runs.items()})
    return found


def _opset(path: Path) -> int:
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next(o.version for o in imports if o.domain in ("", "ai.onnx"))


def _ort(fp32: Path, calibration, workdir: Path) -> dict:
    name = variants.input_name(fp32)
    files, seconds, how = variants.ort_variants(fp32, name, calibration, workdir)
    broken = {label: variants.loads(path) for label, path in files.items()}
    if any(broken.values()) and _opset(fp32) < 13:
        # onnxruntime's quantizer writes per-channel DequantizeLinear (axis) into graphs
        # of opset < 13, which it then refuses; a user would convert the opset and retry
        retry = workdir / "opset13"
        retry.mkdir()
        upgraded = variants.to_opset_13(fp32, retry)
        files13, seconds13, how13 = variants.ort_variants(upgraded, name, calibration, retry)
    found = {}
    for label, path in files.items():
        notes = [how]
        if broken[label] and _opset(fp32) >= 13:
            notes, path = [how, f"onnxruntime refuses the int8 model: {broken[label]}"], None
        elif broken[label]:
            notes = [how, f"onnxruntime refused the model: {broken[label]}",
                     f"retried on the fp32 graph converted to opset 13: {how13}"]  # fmt: skip
            path, seconds[label] = files13[label], seconds13[label]
        found[label] = {"path": path, "seconds": seconds[label], "notes": notes}
    return found


def _nncf(model, fp32: Path, calibration, workdir: Path, threads: int) -> dict:
    import nncf_ptq

    found = {}
    for transformer in (False, True) if model.nncf_transformer else (False,):
        label = "NNCF (TRANSFORMER)" if transformer else "NNCF (defaults)"
        try:
            path, info = nncf_ptq.nncf_quantize(
                fp32, calibration, variants.input_name(fp32), workdir, transformer, threads
            )
            found[label] = {"path": path, "seconds": info["seconds"], "notes": [info]}
        except RuntimeError as exc:
            found[label] = {"path": None, "seconds": None, "notes": [str(exc)]}
    return found


def _mcomp(model, source: Path, data: dict, workdir: Path, budget: bool) -> dict:
    found = {}
    for label, run in variants.mcomp_variants(model, source, data, workdir, budget).items():
        found[label] = {
            "path": run["model"] if run["model"].exists() else None,
            "seconds": variants.stage_seconds(run["report"], "quantize"),
            "wall_seconds": run["wall_seconds"],
            "exit_code": run["exit_code"],
            "details": _quantize_details(run["report"]),
            "notes": [run["stderr"]] if run["stderr"] else [],
        }
    return found


def _quantize_details(mcomp_report: dict | None) -> dict:
    """The figures of mcomp's quantize stage a reader of the benchmark needs."""
    if not mcomp_report:
        return {}
    stage = next((s for s in mcomp_report["stages"] if s.get("type") == "quantize"), None)
    if stage is None:
        return {}
    details = stage.get("details") or {}
    keep = ("mode", "int8_compute_nodes", "float_compute_nodes", "int8_macs_share",
            "reduce_range", "calibration", "fallback", "speed_check")  # fmt: skip
    out = {key: details[key] for key in keep if key in details}
    out["notes"] = stage.get("notes", [])
    out["metric"] = (stage.get("metrics") or {}).get("metric")
    out["baseline_metric"] = mcomp_report["baseline"]["metrics"].get("metric")
    out["ok"] = mcomp_report.get("ok")
    return out


def evaluate(model, found: dict, data: dict, args) -> dict:
    """Fidelity, sizes and latency of every variant that has a file."""
    import numpy as np

    from mcomp.measure.ort_session import create_session

    x = np.load(data["eval"])["x"]
    name = variants.input_name(found["fp32"]["path"])
    sessions, results = {}, {}
    for label, entry in found.items():
        results[label] = {k: v for k, v in entry.items() if k != "path"}
        if entry["path"] is None:
            continue
        try:
            sessions[label] = create_session(entry["path"].read_bytes(), args.threads)
        except Exception as exc:  # noqa: BLE001 - a variant onnxruntime refuses is a finding
            results[label]["notes"].append(f"onnxruntime cannot load it: {exc}"[:600])
            continue
        results[label].update(measure.sizes(entry["path"]))
    reference = measure.outputs(sessions["fp32"], name, x, model.batch)
    for label, session in sessions.items():
        got = reference if label == "fp32" else measure.outputs(session, name, x, model.batch)
        if model.outputs == "all":
            figures = model.fidelity(reference, got)
        else:
            first = next(iter(reference))
            figures = model.fidelity(reference[first], got[first])
        results[label]["hits"] = figures.pop("hits", None)
        results[label]["fidelity"] = figures
    rounds, block = (2, 0.15) if args.quick else (5, 0.4)
    table, runs = measure.latencies(sessions, name, x, model.batch, rounds, block)
    for label, latency in table.items():
        results[label]["latency"] = latency
    return {"variants": results, "timed_runs_per_block": runs, "rounds": rounds}


def bench_model(model, files: dict, args) -> dict:
    counts = model.quick_counts if args.quick else model.counts
    data = {
        split: inputs.build_split(model.builder, split, count, files, fetch.CACHE)
        for split, count in zip(("calibration", "eval"), counts, strict=True)
    }
    data["threads"] = args.threads
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mcomp-bench-{model.name}-") as tmp:
        source = files[model.source]
        found = make_variants(model, source, data, Path(tmp), args)
        result = evaluate(model, found, data, args)
    result.update(
        name=model.name, source=model.source, sha256=fetch.SHA256[model.source],
        kind=model.kind, counts=list(counts), batch=model.batch, primary=model.primary,
        seconds=time.perf_counter() - started,
    )  # fmt: skip
    result["verdicts"] = report.verdicts(model, result)
    return result


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME", help="models whose name contains NAME")
    parser.add_argument("--nncf", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="few samples and rounds")
    parser.add_argument(
        "--budget",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also mcomp with constraints.max_accuracy_drop (its fallback search is the "
        "slowest part of a run; --no-budget for fast iterations on the default path)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here (after each model)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="JSON",
        help="take the models a previous run's --json file measured without error from it "
        "and run only the others (same options), e.g. to finish an interrupted full run",
    )
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    files = fetch.fetch()
    done = {}
    if args.resume and args.resume.exists():
        previous = json.loads(args.resume.read_text())["models"]
        done = {m["name"]: m for m in previous if "error" not in m}
    load, started = os.getloadavg(), time.perf_counter()
    chosen, results = models.select(args.only), []
    for model in chosen:
        print(f"== {model.name}", file=sys.stderr, flush=True)
        if model.name in done:
            results.append({**done[model.name], "resumed_from": str(args.resume)})
        else:
            results.append(_bench_safely(model, files, args))
        sys.stderr.write(report.model_table(results[-1]) + "\n")
        env = report.environment(args, load, time.perf_counter() - started)
        env["models_done"], env["models_chosen"] = len(results), len(chosen)
        # after every model, so an interrupted run keeps what it measured (see --resume)
        if args.json:
            args.json.write_text(json.dumps({"environment": env, "models": results},
                                            default=report.jsonable, indent=1) + "\n")  # fmt: skip
        text = report.section(args, env, results)
        if not args.quick and not args.only:
            update_results(args.results, text)
    sys.stdout.write(text)


def _bench_safely(model, files: dict, args) -> dict:
    try:
        return bench_model(model, files, args)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not lose the rest
        traceback.print_exc()
        return {"name": model.name, "error": f"{type(exc).__name__}: {exc}"[:2000]}


if __name__ == "__main__":
    main()
