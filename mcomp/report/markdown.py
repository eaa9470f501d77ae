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
    if report["constraints"]:
        lines += ["", "| constraint | value | limit | result |", "|---|---:|---:|---|"]
        lines += [
            f"| {c['name']} | {_num(c['value'])} | {_num(c['limit'])} | "
            f"{'ok' if c['ok'] else '**BROKEN**'} |"
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
        _latency(m, base, "latency_ms_b1"),
        _latency(m, base, "latency_ms_batch"),
    ]
    return "| " + " | ".join(cells) + " |"


def _latency(m: dict[str, Any], base: dict[str, Any], key: str) -> str:
    if m.get(key) is None:
        return "-"
    return _with_ratio(m[key], base[key], f"{m[key]:.3g}")


def _with_ratio(value: float | None, before: float | None, text: str) -> str:
    """`text ×N`: N = baseline / value, so ×4 means four times smaller or faster."""
    if not value or not before or value == before:
        return text
    return f"{text} ×{before / value:.2g}"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
