"""A run's report as Markdown: the before/after table and the constraint results, for pull
request comments and GitHub's job summary (`$GITHUB_STEP_SUMMARY`)."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "stage",
    "params",
    "sparsity",
    "size",
    "compressed",
    "MACs",
    "{metric}",
    "ms b1",
    "ms b{batch}",
)


def summary_markdown(report: dict[str, Any]) -> str:
    """One Markdown document: heading with the verdict, table, constraints, artifacts."""
    base = report["baseline"]["metrics"]
    verdict = "ok" if report["ok"] else "LIMITS BROKEN"
    header = [
        c.format(metric=base["metric_name"], batch=base.get("latency_batch", "N")) for c in COLUMNS
    ]
    lines = [
        f"### mcomp: {verdict} — {report['recipe_file']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        _row("baseline", base, base),
    ]
    lines += [_row(entry["name"], entry["metrics"], base) for entry in report["stages"]]
    lines += _latency_note(report.get("latency") or {}, report.get("environment") or {})
    if report["constraints"]:
        lines += ["", "| constraint | value | limit | result |", "|---|---:|---:|---|"]
        lines += [
            f"| {c['name']} | {_num(c['value'])}{_interval(c)} | {_num(c['limit'])} | "
            f"{'ok' if c['ok'] else '**BROKEN**'}{_certainty(c)} |"
            for c in report["constraints"]
        ]
    lines += ["", f"Model: `{report['artifacts']['model']}`", ""]
    return "\n".join(lines)


def _row(name: str, m: dict[str, Any], base: dict[str, Any]) -> str:
    metric = f"{m['metric']:.4f}" + ("" if m is base else f" ({m['metric'] - base['metric']:+.4f})")
    cells = [
        name,
        f"{m['params']:,}",
        f"{m['sparsity'] * 100:.0f}%",
        _with_ratio(m["size_bytes"], base["size_bytes"], f"{m['size_bytes']:,} B"),
        _with_ratio(
            m["size_compressed_bytes"],
            base["size_compressed_bytes"],
            f"{m['size_compressed_bytes']:,} B",
        ),
        _with_ratio(m["macs"], base["macs"], f"{m['macs']:,}"),
        metric,
        _latency(m, base, "b1"),
        _latency(m, base, "batch"),
    ]
    return "| " + " | ".join(cells) + " |"


def _latency(m: dict[str, Any], base: dict[str, Any], label: str) -> str:
    """`0.147 (0.145–0.151) ×1.1`: the median, the spread over rounds, the speed-up over the
    baseline or `≈` when the timing does not resolve a difference."""
    from mcomp.report.speedup import latency_of, speedup_between

    figures = latency_of(m, label)
    if figures is None:
        return "-"
    text = f"{figures['median_ms']:.3g}"
    if figures["min_ms"] != figures["max_ms"]:
        text += f" ({figures['min_ms']:.3g}–{figures['max_ms']:.3g})"
    found = None if m is base else speedup_between(base, m, label)
    return text if found is None else f"{text} {found.text()}"


def _latency_note(timing: dict[str, Any], env: dict[str, Any]) -> list[str]:
    if not timing.get("enabled"):
        return []
    cpu = ""
    if "cpu_isa_source" in env:
        cpu = f" CPU: {', '.join(env['cpu_isa']) or 'none'} (from {env['cpu_isa_source']})."
    lines = [
        "",
        f"Latency: median ms over {timing['rounds']} rounds (min–max in brackets), every "
        "model timed side by side at the end of the run; `≈`: no difference beyond the "
        f"spread.{cpu}",
    ]
    if timing.get("busy_warning"):
        lines += ["", f"**Warning:** {timing['busy_warning']}."]
    return lines


def _interval(check: dict[str, Any]) -> str:
    if "interval" not in check:
        return ""
    low, high = check["interval"]
    return f" (estimate {check['estimate']:.3g}, {low:.3g}–{high:.3g})"


def _certainty(check: dict[str, Any]) -> str:
    return f" ({check['certainty']})" if check.get("certainty") == "uncertain" else ""


def _with_ratio(value: float | None, before: float | None, text: str) -> str:
    """`text ×N`: N = baseline / value, so ×4 means four times smaller or faster."""
    if not value or not before or value == before:
        return text
    return f"{text} ×{before / value:.2g}"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
