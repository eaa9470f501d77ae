"""Everything a run needs before the first stage: model, data, signature, metric, context."""

from __future__ import annotations

from pathlib import Path

from mcomp.errors import DataError, ModelLoadError
from mcomp.factory import extend_python_path
from mcomp.progress import Progress
from mcomp.recipe.load import LoadedRecipe


def prepare_run(loaded: LoadedRecipe, options, workdir: Path, progress: Progress):
    """Load and check everything; returns (model state, stage context, stage instances)."""
    import onnxruntime

    from mcomp.compressors.registry import stage_class
    from mcomp.data.checks import check_finite
    from mcomp.data.load import load_datasets
    from mcomp.measure.inference import predict_split
    from mcomp.measure.metrics import resolve_metric
    from mcomp.model.load import load_model
    from mcomp.model.modes import copy_module
    from mcomp.model.signature import conform_datasets, probe, resolve_inputs
    from mcomp.run.memory import check_batch_fits
    from mcomp.run.threads import apply_threads, resolve_threads, seed_everything
    from mcomp.stage import StageContext

    recipe = loaded.recipe
    extend_python_path(loaded.base_dir / folder for folder in recipe.model.python_path)
    seed = recipe.seed if options.seed is None else options.seed
    threads = resolve_threads(recipe.runtime, options.threads)
    apply_threads(threads)
    # Sessions onnxruntime opens itself (quantization's pre-processing and calibration) log
    # warnings to stderr, which carries only mcomp's own lines; ours already pass level 3.
    onnxruntime.set_default_logger_severity(3)
    seed_everything(seed)
    progress.log(
        f"loading model ({recipe.model.builtin or recipe.model.path or recipe.model.factory})"
    )
    state = load_model(recipe.model, base_dir=loaded.base_dir, allow_pickle=options.allow_pickle)
    check_weights(state, "model.path")
    progress.log("loading data")
    datasets = require_eval(
        load_datasets(recipe.data, base_dir=loaded.base_dir, seed=seed), progress
    )
    for note in datasets.train_notes():
        progress.warn(f"data.train_from: {note}")
    state.inputs = resolve_inputs(recipe.model.inputs, state, datasets)
    datasets = conform_datasets(datasets, state.inputs)
    check_finite(datasets)
    probe(state, datasets, threads)
    state.output = pick_output(state, recipe.model.output, datasets)
    if recipe.runtime.latency.enabled:
        check_batch_fits(
            recipe.runtime.latency.batch, datasets.eval.inputs, "runtime.latency.batch"
        )
    metric = resolve_metric(recipe, has_labels=datasets.eval.labels is not None)
    device, dist = _devices(recipe, datasets, progress)
    ctx = StageContext(
        datasets=datasets,
        seed=seed,
        threads=threads,
        metric=metric,
        task=recipe.task,
        batch_size=recipe.data.batch_size,
        original=state,
        workdir=workdir,
        progress=progress,
        # a bundled recipe lives in site-packages: its relative paths mean cwd
        recipe_dir=Path.cwd() if loaded.packaged else loaded.base_dir,
        device=device,
        dist=dist,
        accuracy_budget=recipe.constraints.max_accuracy_drop,
        # said when training starts, so that runs that train nothing do not say it
        device_note="runtime.device auto: no GPU, training on the CPU"
        if recipe.runtime.device == "auto" and device == "cpu"
        else None,
    )
    ctx.reference_outputs = predict_split(
        state, datasets.eval, batch_size=recipe.data.batch_size, threads=threads
    )
    stages = [stage_class(name)(opts) for name, opts in loaded.stages]
    # Stages change modules in place; the original stays intact for fidelity and teachers.
    working = state.with_module(copy_module(state.module)) if state.module is not None else state
    return working, ctx, stages


def pick_output(state, choice, datasets) -> int:
    """`model.output` as the index of the output that metrics and the task loss read; a
    name or index the model does not have fails here, listing the outputs it has."""
    from mcomp.model.outputs import choose_output

    split = datasets.first_available()
    return choose_output(state, choice, {k: v[:2] for k, v in split.inputs.items()})


def check_weights(state, key: str) -> None:
    """Weights holding NaN or Inf fail here, naming the tensor."""
    from mcomp.model.finite import describe_nonfinite, first_nonfinite_weight

    found = first_nonfinite_weight(state)
    if found is not None:
        raise ModelLoadError(
            f"{key}: {state.source or 'the model'}: {describe_nonfinite(found)}; the file "
            "is damaged or was saved from a diverged training"
        )


def check_labels_fit(ctx, stages) -> None:
    """Eval labels (for a label metric) and train labels (for a training stage) fit the
    model's outputs on the baseline. Called after the stages' own checks, whose errors
    (a stage that cannot work at all) come first."""
    from mcomp.data.checks import check_labels
    from mcomp.recipe.schema import Task

    datasets = ctx.datasets
    trains = any(stage.runs_on_all_ranks() for stage in stages)
    outputs = ctx.reference_outputs
    if ctx.metric.needs_labels:
        classification = ctx.metric.name == "accuracy"
        check_labels(datasets.eval, outputs, classification=classification, key="data.eval")
    if trains and datasets.train is not None:
        classification = ctx.task == Task.CLASSIFICATION
        check_labels(datasets.train, outputs, classification=classification, key="data.train")


def _devices(recipe, datasets, progress: Progress):
    """The training device and, under torchrun, this process's place in the group."""
    from mcomp.run.distributed import init_distributed, resolve_device

    device = resolve_device(recipe.runtime.device)
    dist = init_distributed(device, recipe.runtime.distributed_timeout_s)
    if dist is not None:
        train = datasets.train
        if train is not None and len(train) < dist.world_size:
            raise DataError(
                f"data.train: {len(train)} samples cannot be shared among "
                f"{dist.world_size} processes; use fewer (--nproc_per_node)"
            )
        progress.log(f"distributed: rank {dist.rank} of {dist.world_size} ({dist.backend})")
    return device, dist


def require_eval(datasets, progress: Progress):
    """The eval split, or train with a warning when the recipe names none."""
    if datasets.eval is not None:
        return datasets
    if datasets.train is None:
        raise DataError(
            "data.eval: the recipe names no eval split (nor train); add `data: {eval: ...}`"
        )
    progress.warn("data.eval is not set: evaluating on the train split")
    datasets.eval = datasets.train
    return datasets
