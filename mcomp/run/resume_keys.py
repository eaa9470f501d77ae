"""The resume cache's keys: a digest of everything a stage's result depends on.

    key(0)     = sha256(mcomp/torch/onnxruntime versions, seed, threads, device, task, metric,
                        accuracy budget, the model spec and the loaded model's content,
                        the data spec and every split's arrays)
    key(i + 1) = sha256(key(i), stage index, name, resolved options, files they name)

A changed option changes its stage's key and every later one, so a run reuses the stages
before the change only. What is hashed is what was loaded (weights, arrays), not only file
names, so a factory or data set that changed is noticed; the Python code of a factory or
metric on `python_path` is not (docs/outputs.md says so).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mcomp import __version__
from mcomp.recipe.load import LoadedRecipe
from mcomp.run.recipe_paths import stage_path_slots

CACHE_FORMAT = 1


def base_key(loaded: LoadedRecipe, ctx) -> str:
    """key(0): the run's inputs and the settings every stage sees."""
    import onnxruntime
    import torch

    recipe = loaded.recipe
    facts = {
        "format": CACHE_FORMAT,
        "versions": [__version__, torch.__version__, onnxruntime.__version__],
        "seed": ctx.seed,
        "threads": ctx.threads,
        "device": ctx.device,
        "task": str(ctx.task),
        "metric": [recipe.metric, recipe.metric_higher_is_better, ctx.metric.name],
        "batch_size": ctx.batch_size,
        "accuracy_budget": ctx.accuracy_budget,
        "model_spec": recipe.model.model_dump(mode="json"),
        "model": model_digest(ctx.original),
        "data_spec": recipe.data.model_dump(mode="json"),
        "data": datasets_digest(ctx.datasets),
    }
    return _digest(facts)


def stage_keys(loaded: LoadedRecipe, ctx, first: str) -> list[str]:
    """key(1) … key(n), one per stage, chained from `first`."""
    keys, previous = [], first
    for index, (name, options) in enumerate(loaded.stages):
        resolved = options.model_dump(mode="json")
        files = {}
        for container, key, position in stage_path_slots(resolved):
            value = container[key] if position is None else container[key][position]
            files[value] = file_digest(ctx.recipe_dir / value)
        previous = _digest(
            {
                "previous": previous,
                "index": index,
                "stage": name,
                "options": resolved,
                "files": files,
            }
        )
        keys.append(previous)
    return keys


def model_digest(state) -> str:
    """The loaded model's content: weights and structure (torch) or the graph (ONNX)."""
    digest = hashlib.sha256()
    if state.module is not None:
        import torch

        digest.update(repr(state.module).encode())
        for name, tensor in state.module.state_dict().items():
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    if state.onnx_model is not None:
        digest.update(state.onnx_model.SerializeToString())
    digest.update(json.dumps([i.model_dump(mode="json") for i in state.inputs]).encode())
    return digest.hexdigest()


def datasets_digest(datasets) -> dict[str, str | None]:
    """One digest per split over its arrays' names, dtypes, shapes and bytes."""
    digests: dict[str, str | None] = {}
    for name in ("train", "calibration", "eval"):
        split = getattr(datasets, name)
        if split is None:
            digests[name] = None
            continue
        digest = hashlib.sha256()
        arrays = sorted(split.inputs.items())
        if split.labels is not None:
            arrays.append(("<labels>", split.labels))
        for key, array in arrays:
            digest.update(f"{key}:{array.dtype}:{array.shape}".encode())
            digest.update(memoryview(array.tobytes()))
        digests[name] = digest.hexdigest()
    return digests


def file_digest(path: Path) -> str | None:
    """A file's sha256, None for what is not a file (a python_path folder)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
