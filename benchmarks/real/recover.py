"""Recovery without labels on real models: prune, distil from the original, int8 on top.

    python benchmarks/real/recover.py [--threads 2] [--only NAME] [--quick]
                                      [--json OUT.json] [--results benchmarks/RESULTS.md]

Issue 16's targets on the torch models of benchmarks/real (models.py): easyocr's english_g2
recogniser (unstructured 50 % of its Conv/Linear weights, distilled with `kl` over the CTC
time steps) and the CRAFT detector (channel pruning to 0.6x MACs, distilled with `mse` on its
score maps), each through `mcomp run` recipes as a user writes them (recover_recipes.py), on
unlabelled rendered inputs: a train split (distillation), a val split (the recipes' eval
split: checkpoint choice, parity check, mcomp's own figures), both distinct from the
evaluation split every figure here is measured on.

Per model, three `mcomp run`s:
1. `prune -> export` (`output.baseline: baseline.onnx`): the fp32 and the plainly pruned files;
2. `prune -> distill -> quantize -> export` (`output.torch_model: model.pt2`): the int8 file,
   the composition in one recipe, mcomp's report with each stage's seconds and figures;
3. `export` of that model.pt2: the pruned and distilled model as fp32 ONNX.
The four files are then scored against the fp32 outputs on the evaluation inputs
(metrics.py), their zeros counted, and timed side by side in this process (measure.py).
`--quick` (few samples, one epoch) prints the tables and leaves RESULTS.md alone, as does
`--only`; a full run writes `## real models: recovery without labels`.
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
import recover_recipes  # noqa: E402
import recover_report  # noqa: E402
import report  # noqa: E402
import variants  # noqa: E402
from results_file import update_results  # noqa: E402

REPO = HERE.parent.parent
VARIANTS = ("fp32", "pruned", "pruned+reconstructed", "pruned+distilled", "pruned+distilled+int8")


def _run(recipe_text: str, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(recipe_text)
    run = variants.run_mcomp(recipe, folder / "out")
    if run["exit_code"]:
        raise RuntimeError(f"mcomp run {recipe} exited {run['exit_code']}: {run['stderr']}")
    return run


def make_models(target, data: dict, workdir: Path, args) -> dict:
    """The three mcomp runs; {"files": {variant: path}, "runs": {...}, "recipes": {...}}."""
    write = recover_recipes.recipe
    recipes = {
        "plain": write(target, data, args, stages=target.prune_stages(args) + ["export: {}"],
                       output="{baseline: baseline.onnx}"),
        "chain": write(target, data, args, stages=target.chain_stages(args),
                       output="{torch_model: model.pt2}"),
    }  # fmt: skip
    if target.chain_prune:
        recipes["reconstructed"] = write(target, data, args, stages=[
            f"prune: {target.chain_prune}", "export: {}"])  # fmt: skip
    runs = {name: _run(text, workdir / name) for name, text in recipes.items()}
    pt2 = workdir / "chain" / "out" / "model.pt2"
    recipes["distilled"] = write(target, data, args, stages=["export: {}"], path=pt2)
    runs["distilled"] = _run(recipes["distilled"], workdir / "distilled")
    files = {
        "fp32": workdir / "plain" / "out" / "baseline.onnx",
        "pruned": runs["plain"]["model"],
        **(
            {"pruned+reconstructed": runs["reconstructed"]["model"]}
            if "reconstructed" in runs
            else {}
        ),  # fmt: skip
        "pruned+distilled": runs["distilled"]["model"],
        "pruned+distilled+int8": runs["chain"]["model"],
    }
    return {"files": files, "runs": runs, "recipes": recipes}


def evaluate(target, files: dict, x, args) -> dict:
    """Fidelity to fp32, zeros, sizes and side-by-side latency of each file."""
    from mcomp.measure.ort_session import create_session

    sessions = {label: create_session(path.read_bytes(), args.threads) for label, path in
                files.items()}  # fmt: skip
    name = sessions["fp32"].get_inputs()[0].name
    reference = measure.outputs(sessions["fp32"], name, x, target.model.batch)
    rows = {}
    for label, session in sessions.items():
        got = measure.outputs(session, name, x, target.model.batch)
        first = next(iter(reference))
        figures = target.model.fidelity(reference[first], got[first])
        figures.pop("hits", None)
        rows[label] = {"fidelity": figures, **measure.sizes(files[label]),
                       **recover_report.weight_zeros(files[label])}  # fmt: skip
    rounds, block = (2, 0.15) if args.quick else (5, 0.4)
    table, runs = measure.latencies(sessions, name, x, target.model.batch, rounds, block)
    for label, latency in table.items():
        rows[label]["latency"] = latency
    return {"variants": rows, "timed_runs_per_block": runs, "rounds": rounds}


def bench(target, files: dict, args) -> dict:
    counts = target.quick_counts if args.quick else target.counts
    data = {
        split: inputs.build_split(target.builder, split, count, files, fetch.CACHE)
        for split, count in counts.items()
    }
    data["source"] = files[target.model.source]
    import numpy as np

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mcomp-recover-{target.name}-") as tmp:
        made = make_models(target, data, Path(tmp), args)
        result = evaluate(target, made["files"], np.load(data["eval"])["x"], args)
    result.update(
        name=target.name, source=target.model.source, counts=counts,
        batch=target.model.batch, primary=target.primary, shape=list(target.shape),
        recipes=made["recipes"], seconds=time.perf_counter() - started,
        reports={k: recover_report.run_summary(r) for k, r in made["runs"].items()},
    )  # fmt: skip
    result["targets"] = recover_report.targets(target, result)
    return result


def _reused(args, chosen) -> list[dict]:
    """The models of `--reuse JSON` not chosen now, each marked with its own run's date,
    command and load (read when the section is written: that run may still be going)."""
    if not args.reuse:
        return []
    names, earlier = {t.name for t in chosen}, json.loads(args.reuse.read_text())
    env = earlier["environment"]
    measured = {key: env.get(key) for key in ("date", "command", "load_start", "load_end",
                                               "others_share")}  # fmt: skip
    return [{**m, "reused": measured} for m in earlier["models"] if m["name"] not in names]


def _bench_safely(target, files: dict, args) -> dict:
    try:
        return bench(target, files, args)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not lose the other
        traceback.print_exc()
        return {"name": target.name, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME", help="models whose name contains NAME")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few samples, one epoch")
    parser.add_argument("--json", type=Path, help="write every figure here (after each model)")
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="JSON",
        help="take the models --only does not choose from this earlier --json file (each keeps "
        "its own recipes and date) and write the section with all of them",
    )
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    files = fetch.fetch()
    chosen = recover_recipes.select(args.only)
    load, started, results = os.getloadavg(), time.perf_counter(), []

    probe = recover_report.start_probe()
    for target in chosen:
        print(f"== {target.name}", file=sys.stderr, flush=True)
        results.append(_bench_safely(target, files, args))
        sys.stderr.write(recover_report.model_table(results[-1]) + "\n")
        env = report.environment(argparse.Namespace(threads=args.threads, nncf=True,
                                                    quick=args.quick, budget=True,
                                                    only=args.only),
                                 load, time.perf_counter() - started)  # fmt: skip
        env.update(recover_report.probe_figures(probe), command=recover_report.command(args))
        if args.json:
            args.json.write_text(json.dumps({"environment": env, "models": results},
                                            default=report.jsonable, indent=1) + "\n")  # fmt: skip
        text = recover_report.section(env, _reused(args, chosen) + results)
        if not args.quick and (args.reuse or not args.only):
            update_results(args.results, text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
