"""Run a validated recipe: load, measure the baseline, run and measure each stage, check the
limits, write the outputs as one unit, return the report.

Every destination is checked and the output folder locked before any work
(`mcomp.run.writer`); each stage's result is cached for `--resume` (`mcomp.run.resume`)."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcomp.errors import NonFiniteError, OutputError, StageError
from mcomp.progress import Progress
from mcomp.recipe.load import LoadedRecipe


@dataclass
class RunOptions:
    """Command-line choices that override or complement the recipe."""

    out_dir: Path | None = None
    allow_pickle: bool = False
    seed: int | None = None
    threads: int | None = None
    resume: bool = False  # reuse the cached stages whose keys match
    wait: bool = False  # wait for another run that holds the output folder
    report_file: Path | None = None  # --report ('-': stdout, printed by the CLI)
    summary_md: Path | None = None  # --summary-md
    command: list[str] | None = None  # the command line, for provenance.json


@dataclass
class RunResult:
    report: dict[str, Any]
    ok: bool


def output_dir(loaded: LoadedRecipe, options: RunOptions) -> Path:
    """--out, else `output.dir` (relative to the recipe), else ./mcomp-out."""
    if options.out_dir is not None:
        out = options.out_dir
    elif loaded.recipe.output.dir is not None and not loaded.packaged:
        out = loaded.base_dir / loaded.recipe.output.dir
    else:
        out = Path("mcomp-out")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output.dir: {out} exists and is a file; choose a directory (--out)")
    if str(out) in ("", "-"):
        raise OutputError(f"output.dir: {str(out)!r} is no folder; choose a directory (--out)")
    # a file above it would only fail the final write, after all the work
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise OutputError(
            f"output.dir: cannot create {out}: {blocked} is a file; choose a directory (--out)"
        )
    return out


def run_pipeline(loaded: LoadedRecipe, options: RunOptions, progress: Progress) -> RunResult:
    """Run every stage of the recipe in order; see the module docstring."""
    from mcomp.run.finish import check_space
    from mcomp.run.prepare import prepare_run
    from mcomp.run.writer import open_run_writer

    out = output_dir(loaded, options)
    with open_run_writer(loaded, options, out, progress) as writer:
        state, ctx, stages = prepare_run(loaded, options, writer.scratch_dir, progress)
        check_space(writer, state, loaded)
        baseline, stage_entries, state, last_torch = _run_stages(
            state, ctx, stages, loaded, progress, (writer, options.resume)
        )
        return _finish(loaded, out, (state, last_torch), ctx, baseline, stage_entries, writer)


def _measure(state, ctx, main: bool, models: list[bytes]):
    """The model's figures (rank 0 only), keeping its ONNX bytes for the end-of-run timing."""
    from mcomp.measure.figures import measure_model, onnx_form

    if not main:
        return None
    metrics = measure_model(state, ctx)
    models.append(onnx_form(state).SerializeToString())
    return metrics


def _run_stages(state, ctx, stages, loaded: LoadedRecipe, progress: Progress, resuming):
    from mcomp.measure.figures import onnx_form
    from mcomp.model.format_limits import check_stage
    from mcomp.report.constraints import absolute_budget
    from mcomp.run.latency import time_run_models
    from mcomp.run.prepare import check_labels_fit
    from mcomp.run.threads import seed_everything

    models: list[bytes] = []  # every entry's ONNX form, timed side by side at the end
    # Every stage checks its options against the model before any work is done, so a bad
    # pattern in stage 4 fails in a second, not after an hour of finetuning.
    for index, stage in enumerate(stages):
        # a .pt2 / TorchScript keeps no layer modules for stages that rebuild layers
        check_stage(state.module, index, stage.name, stage.options)
        stage.check(state, ctx)
    check_labels_fit(ctx, stages)
    main = ctx.dist is None or ctx.dist.is_main  # under torchrun only rank 0 measures
    progress.start("measuring baseline")
    start = time.perf_counter()
    baseline = {
        "name": "baseline",
        "type": "baseline",
        "model_kind": str(state.kind),
        "metrics": _measure(state, ctx, main, models),
    }
    baseline["seconds"] = round(time.perf_counter() - start, 3)
    progress.finish()
    if main:  # a relative budget (max_relative_drop) is known in metric units from here on
        ctx.original_metric = baseline["metrics"]["metric"]
        ctx.accuracy_budget = absolute_budget(
            loaded.recipe.constraints, baseline["metrics"]["metric"]
        )
    entries = []
    names = Counter()
    last_torch = state if state.kind == "torch" else None
    writer, resume = resuming  # the keys are made after the baseline: they see its budget
    cache = writer.stage_cache(loaded, ctx, resume=resume) if main else None
    for index, stage in enumerate(stages):
        names[stage.name] += 1
        label = stage.name if names[stage.name] == 1 else f"{stage.name}#{names[stage.name]}"
        reused = cache.reuse(index, ctx) if cache is not None else None
        if reused is not None:
            state, entry = reused
            progress.log(f"stage {index + 1}/{len(stages)}: {label}: reused from the cache")
            last_torch = state if state.kind == "torch" else last_torch
            entries.append(entry)
            models.append(onnx_form(state).SerializeToString())  # timed with the others
            continue
        progress.log(f"stage {index + 1}/{len(stages)}: {label}")
        seed_everything(ctx.seed + index)
        start = time.perf_counter()
        state, notes = _run_stage(stage, state, ctx)
        if state.kind == "torch":
            _check_weights_after(state, label)
            last_torch = state
        seconds = time.perf_counter() - start
        progress.start(f"measuring after {label}")
        try:
            metrics = _measure(state, ctx, main, models)
        except NonFiniteError as exc:
            raise NonFiniteError(
                f"stage {label}: after this stage {exc}; if it trains, training diverged: "
                "lower its `lr`"
            ) from None
        progress.finish()
        if ctx.dist is not None:
            ctx.dist.barrier()  # the other ranks wait while rank 0 measures
        entries.append(
            {
                "name": label,
                "type": stage.name,
                "index": index,
                "seconds": round(seconds, 3),
                "model_kind": str(state.kind),
                "notes": notes + stage.notes,
                "details": stage.details,
                "metrics": metrics,
                "resumed": False,
            }
        )
        if cache is not None:
            cache.save(index, state, ctx, entries[-1])
    if main:
        # how the latency was timed travels with the baseline entry to the report, which
        # lifts it to its own top-level `latency` block (see _finish)
        baseline["timing"] = time_run_models(
            [baseline, *entries], models, ctx, loaded.recipe.runtime.latency
        )
    return baseline, entries, state, last_torch


def _check_weights_after(state, label: str) -> None:
    from mcomp.model.finite import describe_nonfinite, first_nonfinite_weight

    found = first_nonfinite_weight(state)
    if found is not None:
        raise StageError(
            f"stage {label}: after this stage {describe_nonfinite(found)}; if it trains, "
            "training diverged: lower its `lr`"
        )


def _run_stage(stage, state, ctx) -> tuple[Any, list[str]]:
    """Run one stage; under torchrun either on every rank (training) or on rank 0 only, the
    result then broadcast so every rank goes on with the same model."""
    try:
        return _run_stage_here(stage, state, ctx)
    finally:  # a stage's scratch files (quantize's ONNX copies) are of no use to the next
        for child in list(ctx.workdir.iterdir()) if ctx.workdir.is_dir() else []:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _run_stage_here(stage, state, ctx) -> tuple[Any, list[str]]:
    from mcomp.run.distributed import fingerprint

    dist = ctx.dist
    if dist is None or stage.runs_on_all_ranks():
        state, notes = _convert_if_needed(state, stage, ctx)
        state = stage.run(state, ctx).without_caches_of(state)
        if dist is not None:
            prints = dist.all_gather(fingerprint(state))
            stage.details["distributed"] = {
                "world_size": dist.world_size,
                "ranks_agree": len(set(prints)) == 1,
            }
            if len(set(prints)) != 1:
                ctx.progress.warn(f"{stage.name}: the ranks' models differ after training")
        return state, notes
    notes: list[str] = []
    if dist.is_main:
        state, notes = _convert_if_needed(state, stage, ctx)
        state = stage.run(state, ctx).without_caches_of(state)
    return _broadcast_state(state, ctx), notes


def _broadcast_state(state, ctx):
    """Rank 0's model (and pruning masks) on every rank; caches such as onnxruntime sessions
    stay behind (they cannot be pickled)."""
    from mcomp.model.state import ModelState

    payload = None
    if ctx.dist.is_main:
        payload = {
            "kind": str(state.kind),
            "inputs": state.inputs,
            "module": state.module,
            "onnx": None if state.onnx_model is None else state.onnx_model.SerializeToString(),
            "masks": ctx.facts.masks,
        }
    payload = ctx.dist.broadcast(payload)
    if ctx.dist.is_main:
        return state
    ctx.facts.masks = payload["masks"]
    if payload["kind"] == "torch":
        received = ModelState.from_torch(payload["module"], payload["inputs"], state.source)
    else:
        import onnx

        received = ModelState.from_onnx(
            onnx.load_from_string(payload["onnx"]), payload["inputs"], state.source
        )
    received.output = state.output  # the same output index on every rank
    return received


def _convert_if_needed(state, stage, ctx) -> tuple[Any, list[str]]:
    from mcomp.measure.figures import onnx_form
    from mcomp.model.convert import DEFAULT_OPSET, check_parity
    from mcomp.model.state import ModelKind

    if stage.consumes != ModelKind.ONNX or state.kind != ModelKind.TORCH:
        return state, []
    model = onnx_form(state)
    sample = {k: v[:8] for k, v in ctx.datasets.eval.inputs.items()}
    diff = check_parity(state, model, sample, threads=ctx.threads, atol=1e-4, rtol=1e-3)
    return state.with_onnx(model), [
        f"converted torch → ONNX (fp32, opset {DEFAULT_OPSET}) "
        f"before this stage; parity max |diff| {diff:.2e}"
    ]


def _finish(loaded: LoadedRecipe, out: Path, states, ctx, baseline, entries, writer) -> RunResult:
    from mcomp.report.build import build_report, environment
    from mcomp.report.constraints import check_constraints
    from mcomp.run.finish import output_files

    state, last_torch = states
    if ctx.dist is not None and not ctx.dist.is_main:
        # rank 0 writes every file; the others leave with its verdict
        return RunResult(report=None, ok=ctx.dist.broadcast(None))
    final = entries[-1]["metrics"] if entries else baseline["metrics"]
    constraints = check_constraints(
        loaded.recipe.constraints, baseline["metrics"], final, ctx.metric
    )
    output = loaded.recipe.output
    artifacts = {
        "model": str(out / output.model),
        "report": str(out / "report.json"),
        "recipe": str(out / "recipe.resolved.yaml"),
        "manifest": str(out / "mcomp-manifest.json"),
    }
    program = None
    if output.torch_model is not None:
        program = _torch_program(last_torch, output.torch_model)
        artifacts["torch_model"] = str(out / output.torch_model)
    if output.baseline is not None:
        artifacts["baseline"] = str(out / output.baseline)
    report = build_report(
        recipe=loaded.resolved(),
        recipe_file=str(loaded.file),
        env=environment(
            ctx.threads, device=ctx.device, world_size=ctx.dist.world_size if ctx.dist else 1
        ),
        baseline=baseline,
        stages=entries,
        constraints=constraints,
        artifacts=artifacts,
        latency=baseline.pop("timing", None),
    )
    files, extras = output_files(loaded, out, report, (state, ctx.original, program), writer)
    writer.write(files, **extras)
    writer.progress.log(f"wrote {artifacts['model']}")
    if ctx.dist is not None:
        ctx.dist.broadcast(report["ok"])
    return RunResult(report=report, ok=report["ok"])


def _torch_program(state, name: str) -> bytes:
    """The last torch form as a saved torch.export program (dynamic batch axis)."""
    import io

    import torch

    from mcomp.model.convert import example_inputs

    if state is None:
        raise OutputError(
            f"output.torch_model: {name}: the model never was a torch module "
            "(an ONNX input); remove the key"
        )
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(
            state.module.eval(),
            example_inputs(state),
            dynamic_shapes=tuple({0: batch} for _ in state.inputs),
        )
    except Exception as exc:
        raise OutputError(
            f"output.torch_model: torch.export cannot trace the model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()
