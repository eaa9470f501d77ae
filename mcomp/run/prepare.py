"""Everything a run needs before the first stage: model, data, signature, metric, context."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from mcomp.errors import DataError
from mcomp.progress import Progress
from mcomp.recipe.load import LoadedRecipe


def prepare_run(loaded: LoadedRecipe, options, workdir: Path, progress: Progress):
    """Load and check everything; returns (model state, stage context, stage instances)."""
    import onnxruntime

    from mcomp.compressors.registry import stage_class
    from mcomp.data.load import load_datasets
    from mcomp.measure.inference import predict_split
    from mcomp.measure.metrics import resolve_metric
    from mcomp.model.load import load_model
    from mcomp.model.signature import conform_datasets, probe, resolve_inputs
    from mcomp.run.threads import apply_threads, resolve_threads, seed_everything
    from mcomp.stage import StageContext

    recipe = loaded.recipe
    for folder in recipe.model.python_path:  # so that factories import
        if str(loaded.base_dir / folder) not in sys.path:
            sys.path.insert(0, str(loaded.base_dir / folder))
    seed = recipe.seed if options.seed is None else options.seed
    threads = resolve_threads(recipe.runtime, options.threads)
    apply_threads(threads)
    # Sessions onnxruntime opens itself (quantization's pre-processing and calibration) log
    # warnings to stderr, which carries only mcomp's own lines; ours already pass level 3.
    onnxruntime.set_default_logger_severity(3)
    seed_everything(seed)
    progress.log(f"loading model ({recipe.model.builtin or recipe.model.path})")
    state = load_model(recipe.model, base_dir=loaded.base_dir, allow_pickle=options.allow_pickle)
    progress.log("loading data")
    datasets = require_eval(
        load_datasets(recipe.data, base_dir=loaded.base_dir, seed=seed), progress
    )
    state.inputs = resolve_inputs(recipe.model.inputs, state, datasets)
    datasets = conform_datasets(datasets, state.inputs)
    probe(state, datasets, threads)
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
    working = state.with_module(copy.deepcopy(state.module)) if state.module is not None else state
    return working, ctx, stages


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
