"""The machine-readable report: one JSON document per run (schema in docs/report.md)."""

from __future__ import annotations

import platform
from typing import Any

from mcomp import __version__


def environment(threads: int, *, device: str = "cpu", world_size: int = 1) -> dict[str, Any]:
    """Versions and CPU facts that explain the figures (no timestamps: reports must repeat)."""
    import onnxruntime
    import torch

    from mcomp.measure.cpu_features import detect_cpu_features

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "threads": threads,
        "cpu_isa": list(detect_cpu_features().names),
        "cpu_isa_source": detect_cpu_features().source,
        "training_device": device,
        "world_size": world_size,
    }


def build_report(
    *,
    recipe: dict[str, Any],
    recipe_file: str,
    env: dict[str, Any],
    baseline: dict[str, Any],
    stages: list[dict[str, Any]],
    constraints: list[dict[str, Any]],
    artifacts: dict[str, str],
    latency: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document (schema: docs/report.md); `latency` says how the latency figures
    were timed (`mcomp.run.latency`)."""
    final = stages[-1]["metrics"] if stages else baseline["metrics"]
    return {
        "mcomp_version": __version__,
        "recipe_file": recipe_file,
        "recipe": recipe,
        "environment": env,
        "latency": latency or {"enabled": False},
        "baseline": baseline,
        "stages": stages,
        "final": {"metrics": final, "delta": deltas(baseline["metrics"], final)},
        "constraints": constraints,
        "ok": all(c["ok"] for c in constraints),
        "artifacts": artifacts,
    }


def deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Differences and ratios of the final model against the baseline; speed-ups with their
    interval (`mcomp.report.speedup`)."""
    from mcomp.report.speedup import speedup_between

    found = [(label, speedup_between(before, after, label)) for label in ("b1", "batch")]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a and b else None

    return {
        "metric": after["metric"] - before["metric"],
        "params_ratio": ratio(before["params"], after["params"]),
        "size_ratio": ratio(before["size_bytes"], after["size_bytes"]),
        "size_compressed_ratio": ratio(
            before["size_compressed_bytes"], after["size_compressed_bytes"]
        ),
        "macs_ratio": ratio(before["macs"], after["macs"]),
        **{f"speedup_{label}": None if s is None else round(s.value, 4) for label, s in found},
        "speedup_interval": {
            label: None if s is None else [round(s.low, 4), round(s.high, 4)] for label, s in found
        },
    }
