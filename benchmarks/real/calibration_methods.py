"""Every activation-range method on the real models: the output error `calibration.method:
auto` chooses by, next to the benchmark's fidelity of the same int8 model.

    python benchmarks/real/calibration_methods.py [--only NAME] [--threads 1]
                                                  [--results benchmarks/RESULTS.md]

For each model of `models.py`: the benchmark's recipe with `quantize: {mode: auto,
calibration: {method: auto, candidates: [all five methods]}}`, run in this process. When
auto calibration has quantized with every method (and kept the one whose outputs are
closest to fp32 on 64 calibration samples), each method's int8 model is run over the eval
split and scored with the model's own fidelity figures (metrics.py), and the run is
stopped: the rest of the stage is the same for every method. So one row per method says
what auto saw (output error, calibration samples) and what a user gets (the primary
figure, eval samples), which is how to check that choosing by output error generalises.

Writes the section `## real models: calibration methods (threads=N)` of RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import fetch  # noqa: E402
import inputs  # noqa: E402
import models  # noqa: E402
import variants  # noqa: E402
from results_file import provenance, update_results  # noqa: E402

REPO = HERE.parent.parent
HEADING = "## real models: calibration methods (threads={threads})"
METHODS = ("minmax", "percentile", "mse", "entropy", "mean_minmax")
FIGURES = ("rel_l2", "kl")  # shown next to the primary figure where a model has them


class _Measured(BaseException):
    """Stops the run once every method is measured (not an Exception: nothing catches it)."""


def _outputs(model_bytes: bytes, x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    from mcomp.measure.ort_session import create_session

    session = create_session(model_bytes, threads)
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: x[i : i + 8]}) for i in range(0, len(x), 8)]
    names = [o.name for o in session.get_outputs()]
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def _fidelity(model, reference: dict, outputs: dict) -> dict:
    if model.outputs == "all":
        return model.fidelity(reference, outputs)
    first = next(iter(reference))
    return model.fidelity(reference[first], outputs[first])


def measure_model(model, files: dict, threads: int) -> dict:
    """{method: figures} for every method, and which one auto chose."""
    import mcomp.compressors.quantize.auto_calibration as auto_calibration
    from mcomp.progress import NullProgress
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    data = {
        split: inputs.build_split(model.builder, split, count, files, fetch.CACHE)
        for split, count in zip(("calibration", "eval"), model.counts, strict=True)
    }
    data["threads"] = threads
    candidates = ", ".join(METHODS)
    stage = f"quantize: {{mode: auto, calibration: {{method: auto, candidates: [{candidates}]}}}}"
    found: dict = {}
    quantize_auto = auto_calibration.quantize_auto

    def measured(prepared, target, options, *, excluded, ctx):
        started = time.perf_counter()
        result = quantize_auto(prepared, target, options, excluded=excluded, ctx=ctx)
        found["auto_seconds"] = time.perf_counter() - started
        found["statistics_seconds"] = prepared.statistics.seconds
        x = next(iter(ctx.datasets.eval.inputs.values()))
        reference = _outputs(prepared.path.read_bytes(), x, threads)
        errors = result.calibration["output_error"]
        found["chosen"] = result.calibration["method"]
        found["rows"] = {}
        for method, candidate in [(found["chosen"], result), *result.runners_up.items()]:
            got = _outputs(candidate.model.SerializeToString(), x, threads)
            figures = _fidelity(model, reference, got)
            figures.pop("hits", None)
            found["rows"][method] = {"output_error": errors[method], **figures}
        raise _Measured

    auto_calibration.quantize_auto = measured
    try:
        with tempfile.TemporaryDirectory(prefix=f"mcomp-methods-{model.name}-") as tmp:
            recipe = Path(tmp) / "recipe.yaml"
            variants.write_recipe(model, files[model.source], data, stage, recipe)
            with contextlib.suppress(_Measured):
                run_pipeline(
                    load_recipe(str(recipe), ()), RunOptions(out_dir=Path(tmp) / "out"),
                    NullProgress(),
                )  # fmt: skip
    finally:
        auto_calibration.quantize_auto = quantize_auto
    return found


def rows(model, found: dict, defaults: list[str]) -> list[str]:
    default_choice = min(defaults, key=lambda m: found["rows"][m]["output_error"])
    out = []
    for method in METHODS:
        row = found["rows"][method]
        marks = []
        if method == found["chosen"]:
            marks.append("all five")
        if method == default_choice:
            marks.append("default candidates")
        figures = ", ".join(f"{k} {row[k]:.4g}" for k in FIGURES if k in row)
        out.append(
            f"| {model.name} | {method} | {row['output_error']:.4f} | "
            f"{model.primary} {row[model.primary]:.4f} | {figures} | {' + '.join(marks)} |"
        )
    return out


def main() -> None:
    from mcomp.compressors.quantize.options import CalibrationOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    files = fetch.fetch()
    defaults = list(CalibrationOptions().candidates)
    load_start, table, timings = os.getloadavg(), [], []
    for model in models.select(args.only):
        print(f"== {model.name}", file=sys.stderr, flush=True)
        found = measure_model(model, files, args.threads)
        table += rows(model, found, defaults)
        timings.append(
            f"{model.name} {found['auto_seconds']:.0f} s (statistics and histograms "
            f"{found['statistics_seconds']:.0f} s)"
        )
        print("\n".join(table[-len(METHODS) :]), flush=True)
    section = "\n".join(
        [
            HEADING.format(threads=args.threads),
            "",
            *provenance("benchmarks/real/calibration_methods.py", load_start),
            "- output error: what `calibration.method: auto` compares (relative L2 error of "
            "all outputs on the first 64 calibration samples); the primary figure and the "
            "others: fidelity to fp32 on the eval split (benchmarks/real/metrics.py). "
            "`chosen by`: the method auto keeps with all five candidates, and with the "
            f"default candidates `{defaults}`.",
            f"- Time of auto calibration with all five: {'; '.join(timings)}.",
            "",
            "| model | method | output error | primary | other | chosen by |",
            "|---|---|---|---|---|---|",
            *table,
            "",
        ]
    )
    update_results(args.results, section)


if __name__ == "__main__":
    main()
