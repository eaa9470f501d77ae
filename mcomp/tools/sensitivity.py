"""Run a sensitivity analysis for a recipe and write its files (JSON, CSV, PNG)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from mcomp.atomic import write_bytes_atomic, write_text_atomic
from mcomp.errors import MCompError, OutputError
from mcomp.progress import Progress
from mcomp.recipe.load import load_recipe


def run_sensitivity(
    recipe: str,
    overrides: tuple[str, ...],
    ratios: tuple[float, ...],
    out_dir: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Analyse, then write sensitivity.json / .csv / .png into `out_dir`."""
    from mcomp.compressors.prune.options import PruneOptions
    from mcomp.compressors.prune.sensitivity import analyze_sensitivity
    from mcomp.run.distributed import launched_by_torchrun
    from mcomp.run.pipeline import RunOptions
    from mcomp.run.prepare import check_labels_fit, prepare_run

    if launched_by_torchrun():
        raise MCompError("mcomp sensitivity runs in one process; start it without torchrun")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out: {out_dir} exists and is a file; choose a directory")
    loaded = load_recipe(recipe, overrides)
    options = next((opts for name, opts in loaded.stages if name == "prune"), PruneOptions())
    with tempfile.TemporaryDirectory(prefix="mcomp-") as workdir:
        state, ctx, _ = prepare_run(loaded, RunOptions(), Path(workdir), progress)
        check_labels_fit(ctx, [])
        analysis = analyze_sensitivity(state, ctx, options, ratios, progress)
    files = [out_dir / "sensitivity.json", out_dir / "sensitivity.csv"]
    write_text_atomic(files[0], json.dumps(analysis, indent=2) + "\n")
    write_text_atomic(files[1], _csv(analysis))
    warnings = []
    png = _plot(analysis)
    if png is None:
        warnings.append(
            "matplotlib is not installed, so no sensitivity.png was drawn: "
            "pip install 'mcomp[plot]'"
        )
    else:
        files.append(out_dir / "sensitivity.png")
        write_bytes_atomic(files[-1], png)
    return {"analysis": analysis, "files": [str(f) for f in files], "warnings": warnings}


def _csv(analysis: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["layer", "params", "ratio", analysis["metric_name"], "drop"])
    for name, entry in analysis["layers"].items():
        for point in entry["points"]:
            writer.writerow([name, entry["params"], point["ratio"], point["metric"], point["drop"]])
    return buffer.getvalue()


def _plot(analysis: dict[str, Any]) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, entry in analysis["layers"].items():
        axes.plot(
            [p["ratio"] for p in entry["points"]],
            [p["metric"] for p in entry["points"]],
            marker="o",
            label=name,
        )
    axes.axhline(analysis["baseline"], color="grey", linestyle="--", label="baseline")
    axes.set_xlabel(f"pruning ratio ({analysis['method']}), one layer at a time")
    axes.set_ylabel(analysis["metric_name"])
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
