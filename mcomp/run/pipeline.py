"""Run a validated recipe: load, measure the baseline, run and measure each stage, check the
limits, write the outputs atomically, return the report."""

from __future__ import annotations

import tempfile
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
    # a file above it would only fail the final write, after all the work
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise OutputError(
            f"output.dir: cannot create {out}: {blocked} is a file; choose a directory (--out)"
        )
    return out


def run_pipeline(loaded: LoadedRecipe, options: RunOptions, progress: Progress) -> RunResult:
    """Run every stage of the recipe in order; see the module docstring."""
    from mcomp.run.prepare import prepare_run

    out = output_dir(loaded, options)
    with tempfile.TemporaryDirectory(prefix="mcomp-") as workdir:
        state, ctx, stages = prepare_run(loaded, options, Path(workdir), progress)
        baseline, stage_entries, state, last_torch = _run_stages(
            state, ctx, stages, loaded, progress
        )
        return _finish(loaded, out, (state, last_torch), ctx, baseline, stage_entries, progress)


def _run_stages(state, ctx, stages, loaded: LoadedRecipe, progress: Progress):
    from mcomp.measure.figures import measure_model
    from mcomp.run.prepare import check_labels_fit
    from mcomp.run.threads import seed_everything

    latency = loaded.recipe.runtime.latency
    # Every stage checks its options against the model before any work is done, so a bad
    # pattern in stage 4 fails in a second, not after an hour of finetuning.
    for stage in stages:
        stage.check(state, ctx)
    check_labels_fit(ctx, stages)
    main = ctx.dist is None or ctx.dist.is_main  # under torchrun only rank 0 measures
    progress.start("measuring baseline")
    start = time.perf_counter()
    baseline = {
        "name": "baseline",
        "type": "baseline",
        "model_kind": str(state.kind),
        "metrics": measure_model(state, ctx, latency) if main else None,
    }
    baseline["seconds"] = round(time.perf_counter() - start, 3)
    progress.finish()
    entries = []
    names = Counter()
    last_torch = state if state.kind == "torch" else None
    for index, stage in enumerate(stages):
        names[stage.name] += 1
        label = stage.name if names[stage.name] == 1 else f"{stage.name}#{names[stage.name]}"
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
            metrics = measure_model(state, ctx, latency) if main else None
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
            }
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


def _finish(
    loaded: LoadedRecipe, out: Path, states, ctx, baseline, entries, progress: Progress
) -> RunResult:
    import yaml

    from mcomp.atomic import write_bytes_atomic, write_text_atomic
    from mcomp.measure.figures import onnx_form
    from mcomp.report.build import build_report, environment
    from mcomp.report.constraints import check_constraints

    state, last_torch = states
    if ctx.dist is not None and not ctx.dist.is_main:
        # rank 0 writes every file; the others leave with its verdict
        return RunResult(report=None, ok=ctx.dist.broadcast(None))
    final = entries[-1]["metrics"] if entries else baseline["metrics"]
    constraints = check_constraints(
        loaded.recipe.constraints, baseline["metrics"], final, ctx.metric
    )
    model_path = out / loaded.recipe.output.model
    artifacts = {
        "model": str(model_path),
        "report": str(out / "report.json"),
        "recipe": str(out / "recipe.resolved.yaml"),
    }
    torch_name = loaded.recipe.output.torch_model
    program = None
    if torch_name is not None:
        program = _torch_program(last_torch, torch_name)
        artifacts["torch_model"] = str(out / torch_name)
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
    )
    try:
        write_bytes_atomic(model_path, onnx_form(state).SerializeToString())
        if program is not None:
            write_bytes_atomic(out / torch_name, program)
        write_text_atomic(
            out / "recipe.resolved.yaml", yaml.safe_dump(loaded.resolved(), sort_keys=False)
        )
        from mcomp.report.json_text import report_json

        write_text_atomic(out / "report.json", report_json(report))
    except OSError as exc:
        raise OutputError(f"output.dir: cannot write to {out}: {exc.strerror or exc}") from None
    progress.log(f"wrote {model_path}")
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
