"""The bytes of a run's output set, and the disk-space check made before its first stage.

model.onnx            the final model (output.model)
model.pt2             the last torch form (output.torch_model), when asked
baseline.onnx         the fp32 model as loaded (output.baseline), when asked
recipe.resolved.yaml  the recipe as run, paths rewritten to run from the folder
report.json           the report
provenance.json       the command line that produced them
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from mcomp.recipe.load import LoadedRecipe


def output_files(
    loaded: LoadedRecipe, out: Path, report: dict[str, Any], models, writer
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(the set's files by name, the --report and --summary-md bytes)."""
    from mcomp.measure.figures import onnx_form
    from mcomp.report.json_text import report_json
    from mcomp.report.markdown import summary_markdown
    from mcomp.run.recipe_paths import rerunnable_recipe

    state, original, program = models
    output = loaded.recipe.output
    report_text = report_json(report).encode()
    base = Path.cwd() if loaded.packaged else loaded.base_dir
    recipe = rerunnable_recipe(loaded.resolved(), base=base, out=out, source=str(loaded.file))
    files = {output.model: onnx_form(state).SerializeToString()}
    if program is not None:
        files[output.torch_model] = program
    if output.baseline is not None:
        files[output.baseline] = onnx_form(original).SerializeToString()
    files["recipe.resolved.yaml"] = recipe.encode()
    files["report.json"] = report_text
    files["provenance.json"] = provenance(report, writer.command).encode()
    summary = summary_markdown(report).encode()
    return files, {"report": report_text, "summary": summary}


def provenance(report: dict[str, Any], command: list[str] | None) -> str:
    """The command line that produced the outputs (provenance.json)."""
    argv = command or ["mcomp", "run", report["recipe_file"]]
    return (
        json.dumps(
            {
                "command": shlex.join(argv),
                "argv": argv,
                "cwd": os.getcwd(),
                "mcomp_version": report["mcomp_version"],
                "recipe_file": report["recipe_file"],
                "artifacts": report["artifacts"],
            },
            indent=2,
        )
        + "\n"
    )


def check_space(writer, state, loaded: LoadedRecipe) -> None:
    """Refuse a run whose outputs cannot fit, before its first stage (see RunWriter)."""
    output = loaded.recipe.output
    copies = 1 + (output.torch_model is not None) + (output.baseline is not None)
    cached = len(loaded.stages) if output.cache else 0
    writer.check_space(model_bytes(state), copies=copies, cached_stages=cached)


def model_bytes(state) -> int:
    """The model's size in fp32-like terms: its tensors (torch) or its serialized graph."""
    if state.module is not None:
        tensors = [*state.module.parameters(), *state.module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)
    return state.onnx_model.ByteSize()
