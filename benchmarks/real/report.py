"""Tables, verdicts and the RESULTS.md section of the real-model int8 benchmark.

Verdicts (one line per target per model, for `mcomp auto`, stated as measured):
- fidelity: mcomp's primary figure at least NNCF's (each NNCF variant); for a share of
  samples, "at least" means not significantly worse by the exact paired McNemar test;
- latency: at most 1.05x the fastest plain-onnxruntime int8 variant, at batch 1 and at the
  larger batch (medians over rounds);
- size: at most 0.3x the fp32 file;
- depthwise CNNs (PP-OCR det and cls): the KL / relative error at most half of plain
  onnxruntime U8S8 per-channel's.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import numpy as np
from metrics import mcnemar

AUTO = "mcomp auto"
U8S8 = "ORT static U8S8 per-channel"
HIDDEN = ("text_pixels", "_active", "_rel_l2")  # context, not fidelity: kept in the JSON


def jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _columns(variants: dict) -> list[str]:
    fidelity = variants["fp32"].get("fidelity", {})
    return [k for k in fidelity if not any(k.endswith(h) or k == h for h in HIDDEN)]


def _ratios(row: dict, base: dict, key: str) -> str:
    if "latency" not in row:
        return "-"
    return f"{base['latency'][key]['median_ms'] / row['latency'][key]['median_ms']:.2f}"


def _spread(row: dict, key: str) -> str:
    if "latency" not in row:
        return "-"
    lat = row["latency"][key]
    return f"{lat['median_ms']:.1f} ({lat['min_ms']:.1f}-{lat['max_ms']:.1f})"


def model_table(result: dict) -> str:
    """A Markdown table of one model: fidelity to fp32, size and speed-up per variant."""
    if "error" in result:
        return f"**{result['name']}: failed** ({result['error'][:600]})\n"
    variants, big = result["variants"], f"b{result['batch']}"
    base, columns = variants["fp32"], _columns(variants)
    head = ["variant", *columns, "size", "zlib size", "fp32/x b1", f"fp32/x {big}",
            "b1 ms (min-max)", f"{big} ms (min-max)", "quantize s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in variants.items():
        fidelity = row.get("fidelity", {})
        cells = [label] + [_number(fidelity.get(c)) for c in columns]
        if "bytes" in row:
            cells += [f"{row['bytes'] / base['bytes']:.3f}",
                      f"{row['zlib_bytes'] / base['zlib_bytes']:.3f}"]  # fmt: skip
        else:
            cells += ["-", "-"]
        cells += [_ratios(row, base, "b1"), _ratios(row, base, big), _spread(row, "b1"),
                  _spread(row, big), _number(row.get("seconds"), 1)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != 0 and abs(value) < 10**-digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _fidelity_verdicts(model, variants: dict, ours: dict) -> list[str]:
    out = []
    for label, row in variants.items():
        if not label.startswith("NNCF") or "fidelity" not in row:
            continue
        a, b = ours["fidelity"][model.primary], row["fidelity"][model.primary]
        if model.share:
            test = mcnemar(np.asarray(ours["hits"]), np.asarray(row["hits"]))
            holds = not test["worse"]
            detail = (f"{a:.4f} vs {b:.4f}; {test['only_ours']} vs {test['only_theirs']} "
                      f"samples only one agrees on, p={test['p']:.3f}")  # fmt: skip
        else:
            holds, detail = a >= b, f"{a:.4f} vs {b:.4f}"
        out.append(f"fidelity vs {label} ({model.primary}): "
                   f"{'holds' if holds else 'FAILS'} ({detail})")  # fmt: skip
    return out or ["fidelity vs NNCF: no NNCF result"]


def _latency_verdict(variants: dict, ours: dict, big: str) -> str:
    ort = {k: v for k, v in variants.items() if k.startswith("ORT") and "latency" in v}
    if not ort:
        return "latency <= 1.05x fastest plain ORT: no plain ORT int8 model ran"
    parts, holds = [], True
    for key in ("b1", big):
        fastest = min(ort, key=lambda k: ort[k]["latency"][key]["median_ms"])
        ratio = ours["latency"][key]["median_ms"] / ort[fastest]["latency"][key]["median_ms"]
        holds &= ratio <= 1.05
        parts.append(f"{key} {ratio:.2f}x {fastest}")
    return (
        f"latency <= 1.05x fastest plain ORT: {'holds' if holds else 'FAILS'} ({', '.join(parts)})"
    )


def verdicts(model, result: dict) -> list[str]:
    """Plain statements of `mcomp auto` against each target (module docstring)."""
    variants, big = result["variants"], f"b{result['batch']}"
    ours, out = variants.get(AUTO, {}), []
    if "fidelity" not in ours or "latency" not in ours:
        out.append(f"mcomp auto produced no model (exit code {ours.get('exit_code')}): "
                   + " ".join(ours.get("notes", []))[:300])  # fmt: skip
        copy = variants.get(AUTO + " [opset-13 copy]", {})
        if "fidelity" not in copy or "latency" not in copy:
            return out
        out.append("the verdicts below are for mcomp auto on the opset-13 copy")
        ours = copy
    out += _fidelity_verdicts(model, variants, ours)
    out.append(_latency_verdict(variants, ours, big))
    size = ours["bytes"] / variants["fp32"]["bytes"]
    out.append(f"size <= 0.3x fp32: {'holds' if size <= 0.3 else 'FAILS'} ({size:.3f}x)")
    if model.depthwise and "fidelity" in variants.get(U8S8, {}):
        a = ours["fidelity"][model.error_figure]
        b = variants[U8S8]["fidelity"][model.error_figure]
        out.append(f"{model.error_figure} <= half of {U8S8}'s: "
                   f"{'holds' if a <= b / 2 else 'FAILS'} ({a:.3g} vs {b:.3g})")  # fmt: skip
    for label, budget in variants.items():
        if not label.startswith(AUTO + ", budget"):
            continue
        details = budget.get("details", {})
        trials = len((details.get("fallback") or {}).get("trials", []))
        out.append(
            f"{label}: exit code {budget.get('exit_code')}, mcomp's metric "
            f"{_number(details.get('baseline_metric'))} -> {_number(details.get('metric'))}, "
            f"fallback trials {trials}"
        )
    return out


def environment(args, load: tuple, seconds: float) -> dict:
    import onnxruntime
    import torch

    from mcomp.measure.cpu_features import cpu_features

    return {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "command": "python benchmarks/real/run.py --threads "
        + f"{args.threads}{'' if args.nncf else ' --no-nncf'}{' --quick' if args.quick else ''}"
        + ("" if args.budget else " --no-budget")
        + (f" --only {args.only}" if args.only else ""),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "isa": cpu_features(),
        "load_start": load,
        "load_end": os.getloadavg(),
        "seconds": seconds,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def run_lines(env: dict, load_note: str) -> list[str]:
    """A section's command, date and machine lines; `load_note` ends the load line."""
    return [
        f"- Command: `{env['command']}` ({env['seconds'] / 60:.0f} min in this process)",
        f"- Date: {env['date']}; CPU {env['cpu']}, {env['cpus']} CPUs, ISA "
        f"{', '.join(env['isa'])}; python {env['python']}, torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}",
        f"- Load average (1/5/15 min) start {' '.join(f'{v:.2f}' for v in env['load_start'])},"
        f" end {' '.join(f'{v:.2f}' for v in env['load_end'])}{load_note}",
    ]


def section(args, env: dict, results: list[dict]) -> str:
    lines = [
        f"## real models: int8 (threads={args.threads})",
        "",
        *run_lines(
            env,
            " (a shared machine: compare ratios within one table, not milliseconds across runs)",
        ),
        *(
            [
                f"- **Partial**: {env['models_done']} of {env['models_chosen']} models so far "
                "(the section is rewritten after every model; finish an interrupted run with "
                "`--resume JSON`)"
            ]
            if env.get("models_done", 0) < env.get("models_chosen", 0)
            else []
        ),
        *(
            [f"- Taken from an earlier run's JSON (`--resume`): {', '.join(resumed)}"]
            if (resumed := [r["name"] for r in results if "resumed_from" in r])
            else []
        ),
        "",
        "Fidelity is to the fp32 model on the evaluation inputs (benchmarks/real/metrics.py). "
        "size: file bytes / fp32's (zlib: compressed, level 9). fp32/x > 1: faster than "
        "fp32. ms: median of the per-round medians (min-max over rounds), each session timed "
        "in its own block, rounds in rotating order. quantize s: the quantizer's own time "
        "(mcomp: the report's quantize stage; NNCF: the nncf.quantize call; ORT: the call).",
        "",
    ]
    for result in results:
        counts = result.get("counts", ["?", "?"])
        lines += [f"### {result['name']}", ""]
        if "error" not in result:
            lines += [
                f"`{result['source']}` ({result['kind']}), calibration {counts[0]}, "
                f"evaluation {counts[1]} samples, primary figure `{result['primary']}`",
                "",
            ]
        lines += [model_table(result)]
        lines += [f"- {v}" for v in result.get("verdicts", [])] + [""]
    return "\n".join(lines) + "\n"
