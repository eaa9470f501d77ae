"""Size, latency and the metric per stage as one PNG (`--plot FILE.png`; matplotlib, the
`plot` extra). With two reports the runs are drawn side by side, old then new."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcomp.errors import DependencyError, OutputError
from mcomp.report.speedup import latency_of


def plot_reports(reports: list[tuple[str, dict[str, Any]]], target: Path) -> Path:
    """Draw every (label, report) into `target` (PNG); returns the path written."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    width = 0.8 / len(reports)
    for index, (label, report) in enumerate(reports):
        entries = [report["baseline"], *report["stages"]]
        names = [entry["name"] for entry in entries]
        xs = [x + (index - (len(reports) - 1) / 2) * width for x in range(len(entries))]
        _sizes(axes[0], xs, entries, width, label)
        _latency(axes[1], xs, entries, label)
        axes[2].plot(xs, [e["metrics"]["metric"] for e in entries], "o-", label=label)
        for axis in axes:
            axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    base = reports[-1][1]["baseline"]["metrics"]
    axes[0].set(title="size", ylabel="KiB")
    axes[1].set(title="latency (median, min–max over rounds)", ylabel="ms")
    axes[2].set(title=base["metric_name"], ylabel=base["metric_name"])
    for axis in axes:
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize="small")
    try:
        figure.savefig(target, dpi=110)
    except OSError as exc:
        raise OutputError(f"--plot: cannot write {target}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return target


def _sizes(axis, xs: list[float], entries: list[dict], width: float, label: str) -> None:
    raw = [e["metrics"]["size_bytes"] / 1024 for e in entries]
    packed = [e["metrics"]["size_compressed_bytes"] / 1024 for e in entries]
    axis.bar(xs, raw, width * 0.9, alpha=0.35, label=f"{label} raw")
    axis.bar(xs, packed, width * 0.9, label=f"{label} deflated")


def _latency(axis, xs: list[float], entries: list[dict], label: str) -> None:
    for key, marker in (("b1", "o"), ("batch", "s")):
        figures = [latency_of(e["metrics"], key) for e in entries]
        if any(f is None for f in figures):
            continue
        medians = [f["median_ms"] for f in figures]
        spread = [
            [m - f["min_ms"] for m, f in zip(medians, figures, strict=True)],
            [f["max_ms"] - m for m, f in zip(medians, figures, strict=True)],
        ]
        batch = entries[0]["metrics"].get("latency_batch") or "N"
        axis.errorbar(
            xs,
            medians,
            yerr=spread,
            fmt=marker + "-",
            capsize=3,
            label=f"{label} b{1 if key == 'b1' else batch}",
        )


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DependencyError(
            "--plot needs matplotlib: pip install 'mcomp[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt
