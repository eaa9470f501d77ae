"""What leaving at most 10 % of the MACs in float can reach: the ceiling of the quantize
fallback on the real models.

    python benchmarks/real/float_ceiling.py [--only NAME] [--threads 1] [--samples 32]
                                            [--results benchmarks/RESULTS.md]

The int8 target says the fallback must meet a budget "whenever leaving at most 10 % of the
MACs in float can". This measures whether it can. For each model: the benchmark's budget
recipe (`quantize: {mode: auto}`, `constraints.max_accuracy_drop`), run in this process up
to where the fallback would start; then, on mcomp's own int8 model, by the graph edit the
fallback uses (float_nodes.py, no new calibration), the budget metric of

- every quantized node that is not a compute node in float (Add, Mul, Sigmoid, Resize, ...:
  no MACs),
- that and the compute nodes (Conv, Gemm, MatMul) with the largest gain when floated alone,
  most gain first, while they carry at most 10 % of the MACs (gains on the first
  `--samples` eval samples),
- every compute node in float (all MACs), for scale,

each on the whole eval split, against the fallback's goal. The run stops there.

Writes the section `## real models: what 10 % of MACs in float can reach (threads=N)`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import fetch  # noqa: E402
import inputs  # noqa: E402
import models  # noqa: E402
import variants  # noqa: E402
from results_file import provenance, update_results  # noqa: E402

REPO = HERE.parent.parent
HEADING = "## real models: what 10 % of MACs in float can reach (threads={threads})"
MAC_SHARE = 0.10


class _Measured(BaseException):
    """Stops the run once measured (not an Exception: nothing catches it)."""


def measure_model(model, files: dict, threads: int, samples: int) -> dict:
    import onnx

    import mcomp.compressors.quantize.core as core
    from mcomp.compressors.quantize.float_nodes import quantized_nodes, with_nodes_in_float
    from mcomp.measure.evaluate import evaluate_metric_on_first
    from mcomp.measure.onnx_macs import node_macs_by_name, sample_shapes
    from mcomp.progress import NullProgress
    from mcomp.recipe.load import load_recipe
    from mcomp.run.pipeline import RunOptions, run_pipeline

    data = {
        split: inputs.build_split(model.builder, split, count, files, fetch.CACHE)
        for split, count in zip(("calibration", "eval"), model.counts, strict=True)
    }
    data["threads"] = threads
    found: dict = {}

    def measured(prepared, *, first, options, excluded, state, goal, ctx, mode):
        started = time.perf_counter()
        sign = -1 if goal.higher_is_better else 1
        found.update(goal=goal.reference + sign * goal.budget, metric=ctx.metric.name)
        found["relation"] = ">=" if goal.higher_is_better else "<="
        int8, fp32 = first.model, onnx.load(str(prepared.path))
        macs = node_macs_by_name(fp32, sample_shapes(state.inputs, ctx.datasets))
        total = sum(macs.values()) or 1

        def whole(names) -> float:
            floated = with_nodes_in_float(int8, fp32, set(names)) if names else int8
            return ctx.evaluate(state.with_onnx(floated))

        def gain(name: str) -> float:
            floated = with_nodes_in_float(int8, fp32, {name})
            return goal.drop(base) - goal.drop(
                evaluate_metric_on_first(state.with_onnx(floated), ctx, samples)
            )

        compute = quantized_nodes(int8, compute_only=True)
        other = [n for n in quantized_nodes(int8) if n not in set(compute)]
        found["plain"] = whole([])
        found["other_float"] = whole(other)
        base = evaluate_metric_on_first(state.with_onnx(int8), ctx, samples)
        gains = sorted(((gain(n), n) for n in compute), reverse=True)
        chosen, used = [], 0
        for value, name in gains:
            if value > 0 and used + macs.get(name, 0) <= MAC_SHARE * total:
                chosen.append(name)
                used += macs.get(name, 0)
        found["ceiling"] = whole(other + chosen)
        found["ceiling_nodes"], found["ceiling_share"] = len(chosen), used / total
        found["compute_float"] = whole(compute)
        found["counts"] = (len(other), len(compute))
        found["seconds"] = time.perf_counter() - started
        found["met"] = goal.met(found["ceiling"])
        raise _Measured

    fallback_search = core.fallback_search
    core.fallback_search = measured
    try:
        with tempfile.TemporaryDirectory(prefix=f"mcomp-ceiling-{model.name}-") as tmp:
            folder = Path(tmp)
            recipe = folder / "recipe.yaml"
            variants.write_recipe(
                model, files[model.source], data, "quantize: {mode: auto}", recipe,
                metric=model.budget_metric,
                constraints=f"{{max_accuracy_drop: {variants.BUDGET_DROP}}}",
            )  # fmt: skip
            with contextlib.suppress(_Measured):
                run_pipeline(
                    load_recipe(str(recipe), ()), RunOptions(out_dir=folder / "out"),
                    NullProgress(),
                )  # fmt: skip
    finally:
        core.fallback_search = fallback_search
    return found


def row(model, found: dict) -> str:
    others, compute = found["counts"]
    return (
        f"| {model.name} | {found['metric']} {found['relation']} {found['goal']:.4f} | "
        f"{found['plain']:.4f} | "
        f"{found['other_float']:.4f} ({others} nodes) | {found['ceiling']:.4f} "
        f"(+{found['ceiling_nodes']} of {compute}, {found['ceiling_share']:.1%} of MACs) | "
        f"{found['compute_float']:.4f} | {'yes' if found['met'] else 'no'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    files = fetch.fetch()
    load_start, table = os.getloadavg(), []
    for model in models.select(args.only):
        print(f"== {model.name}", file=sys.stderr, flush=True)
        table.append(row(model, measure_model(model, files, args.threads, args.samples)))
        print(table[-1], flush=True)
    section = "\n".join(
        [
            HEADING.format(threads=args.threads),
            "",
            *provenance("benchmarks/real/float_ceiling.py", load_start),
            "- The budget variant's goal (`constraints.max_accuracy_drop: "
            f"{variants.BUDGET_DROP}` on the budget metric) and mcomp's int8 model before the "
            "fallback, with nodes put back in float by the fallback's graph edit; every "
            "figure on the whole eval split. `non-compute in float`: every quantized node "
            "that carries no MACs; `+ compute nodes`: and the compute nodes of most gain "
            f"alone (on the first {args.samples} eval samples) within "
            f"{MAC_SHARE:.0%} of the MACs; `every compute node in float`: for scale (all "
            "MACs in float, the rest int8).",
            "",
            "| model | goal | plain int8 | non-compute in float | + compute nodes | "
            "every compute node in float | 10 % can meet it |",
            "|---|---|---|---|---|---|---|",
            *table,
            "",
        ]
    )
    update_results(args.results, section)


if __name__ == "__main__":
    main()
