"""Tables, target verdicts and the RESULTS.md section of recover.py.

Recovered share of a fidelity figure f (higher is better; cer is turned around):
(f_recovered - f_pruned) / (f_fp32 - f_pruned), 1 when pruning lost nothing. Weight zeros:
the share of zero elements among the ONNX file's weight initializers (rank >= 2: float
weights, or int8 ones after quantize, whose symmetric zero point keeps a pruned weight 0).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import report as int8_report

RECOVERED_SHARE = 0.8  # issue 16: recover at least 80 % of what plain pruning lost
RECOVERY_SECONDS = 300  # prune + distill on 2 cores
FIDELITY_WITHIN = 0.02  # the detector's figures within 2 % of fp32's
LOWER_IS_BETTER = ("cer", "rel_l2", "kl")


def weight_zeros(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    total = zeros = 0
    for tensor in onnx.load(str(path)).graph.initializer:
        if len(tensor.dims) >= 2:
            array = numpy_helper.to_array(tensor)
            total, zeros = total + array.size, zeros + int((array == 0).sum())
    return {"weights": total, "weight_zeros": zeros / max(total, 1)}


def run_summary(run: dict) -> dict:
    """What a reader needs of one `mcomp run`: exit code, wall time, per stage its seconds
    and figures, the report's latency block (machine load while mcomp timed)."""
    rep = run["report"] or {}
    keep = ("macs", "params", "nonzero_params", "sparsity", "size_bytes", "metric",
            "latency_ms_b1", "latency_ms_batch")  # fmt: skip
    stages = [{"type": s.get("type"), "seconds": s.get("seconds"), "notes": s.get("notes"),
               "metrics": {k: (s.get("metrics") or {}).get(k) for k in keep}}
              for s in [rep.get("baseline", {}), *rep.get("stages", [])]]  # fmt: skip
    return {"exit_code": run["exit_code"], "wall_seconds": run["wall_seconds"],
            "stages": stages, "latency": rep.get("latency")}  # fmt: skip


def _stage(summary: dict, kind: str) -> dict:
    return next((s for s in summary["stages"] if s["type"] == kind), {})


def _oriented(name: str, value: float) -> float:
    return -value if name in LOWER_IS_BETTER else value


def recovered_share(rows: dict, name: str, recovered: str = "pruned+distilled") -> float | None:
    fp32, plain = (_oriented(name, rows[k]["fidelity"][name]) for k in ("fp32", "pruned"))
    got = _oriented(name, rows[recovered]["fidelity"][name])
    return 1.0 if fp32 == plain else (got - plain) / (fp32 - plain)


def macs_ratios(result: dict) -> dict:
    plain, chain = result["reports"]["plain"], result["reports"]["chain"]
    base = _stage(chain, "baseline")["metrics"]["macs"]
    extra = {}
    if "reconstructed" in result["reports"]:
        refit = result["reports"]["reconstructed"]
        extra["pruned+reconstructed"] = _stage(refit, "prune")["metrics"]["macs"] / base
    return {
        "fp32": 1.0,
        "pruned": _stage(plain, "prune")["metrics"]["macs"] / base,
        **extra,
        "pruned+distilled": _stage(chain, "distill")["metrics"]["macs"] / base,
        "pruned+distilled+int8": _stage(chain, "quantize")["metrics"]["macs"] / base,
    }


def stage_seconds(result: dict) -> dict:
    plain, chain = result["reports"]["plain"], result["reports"]["chain"]
    seconds = {k: _stage(chain, k).get("seconds") or 0.0 for k in ("prune", "distill")}
    extra = {}
    if "reconstructed" in result["reports"]:
        refit = result["reports"]["reconstructed"]
        extra["pruned+reconstructed"] = f"prune {_stage(refit, 'prune')['seconds']:.0f}"
    return {
        "pruned": f"prune {_stage(plain, 'prune')['seconds']:.0f}",
        **extra,
        "pruned+distilled": f"prune {seconds['prune']:.0f} + distill {seconds['distill']:.0f}",
        "pruned+distilled+int8": f"quantize {_stage(chain, 'quantize')['seconds']:.0f}",
    }


def _speedup(rows: dict, label: str, key: str) -> float:
    return rows["fp32"]["latency"][key]["median_ms"] / rows[label]["latency"][key]["median_ms"]


def _say(what: str, ok: bool, detail: str) -> str:
    return f"{what}: {'holds' if ok else 'MISSES'} ({detail})"


def targets(target, result: dict) -> list[str]:
    """Plain statements of issue 16's targets for this model, as measured."""
    rows, out = result["variants"], []
    chain = result["reports"]["chain"]
    prune_distill = sum(_stage(chain, k).get("seconds") or 0 for k in ("prune", "distill"))
    if target.macs_target is None:
        for name in target.figures:
            share = recovered_share(rows, name)
            out.append(_say(f"recovered share of {name} >= {RECOVERED_SHARE}",
                            share >= RECOVERED_SHARE, f"{share:.3f}"))  # fmt: skip
        out.append(_say(f"prune + distill <= {RECOVERY_SECONDS} s",
                        prune_distill <= RECOVERY_SECONDS, f"{prune_distill:.0f} s"))  # fmt: skip
    else:
        macs = macs_ratios(result)["pruned+distilled"]
        speed = _speedup(rows, "pruned+distilled", "b1")
        out.append(_say(f"MACs <= {target.macs_target}x", macs <= target.macs_target + 1e-9,
                        f"{macs:.3f}x"))  # fmt: skip
        out.append(_say(f"fp32/pruned+distilled b1 latency >= {target.latency_target}",
                        speed >= target.latency_target, f"{speed:.2f}x"))  # fmt: skip
        for name in target.figures:
            a, b = rows["fp32"]["fidelity"][name], rows["pruned+distilled"]["fidelity"][name]
            out.append(_say(f"{name} within {FIDELITY_WITHIN:.0%} of fp32",
                            b >= a * (1 - FIDELITY_WITHIN), f"{b:.4f} vs {a:.4f}"))  # fmt: skip
        out.append(f"prune + distill took {prune_distill:.0f} s")
    zeros = (rows["pruned"]["weight_zeros"], rows["pruned+distilled+int8"]["weight_zeros"])
    out.append(_say("int8 keeps the zeros", zeros[1] >= zeros[0] - 1e-3,
                    f"weight zeros {zeros[0]:.3f} pruned fp32, {zeros[1]:.3f} int8"))  # fmt: skip
    out.append(f"prune -> distill -> quantize -> export in one recipe: exit code "
               f"{chain['exit_code']}, {chain['wall_seconds']:.0f} s wall")  # fmt: skip
    return out


def model_table(result: dict) -> str:
    if "error" in result:
        return f"**{result['name']}: failed** ({result['error'][:600]})\n"
    rows, big = result["variants"], f"b{result['batch']}"
    figures = [k for k in rows["fp32"]["fidelity"] if k not in int8_report.HIDDEN]
    macs, seconds = macs_ratios(result), stage_seconds(result)
    head = ["variant", *figures, "recovered (primary, cosine)", "MACs", "weight zeros", "size",
            "zlib size", "fp32/x b1", f"fp32/x {big}", "b1 ms", f"{big} ms", "stage s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows["fp32"]
    for label, row in rows.items():
        shares = "-"
        if label not in ("fp32", "pruned"):
            shares = ", ".join(f"{recovered_share(rows, n, label):.3f}"
                               for n in (result["primary"], "cosine"))  # fmt: skip
        cells = [label, *(int8_report._number(row["fidelity"][f]) for f in figures), shares,
                 f"{macs[label]:.3f}", f"{row['weight_zeros']:.3f}",
                 f"{row['bytes'] / base['bytes']:.3f}",
                 f"{row['zlib_bytes'] / base['zlib_bytes']:.3f}",
                 f"{_speedup(rows, label, 'b1'):.2f}", f"{_speedup(rows, label, big):.2f}",
                 int8_report._spread(row, "b1"), int8_report._spread(row, big),
                 seconds.get(label, "-")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cpu_seconds() -> tuple[float, float | None]:
    """(this process and its finished children's CPU seconds, the machine's busy seconds)."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return own, None
    idle = fields[3] + fields[4]
    return own, (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def start_probe() -> tuple[float, float, float | None]:
    return (time.perf_counter(), *_cpu_seconds())


def probe_figures(probe: tuple) -> dict:
    """CPU time the rest of the machine used since `start_probe`, as a share of all CPUs."""
    wall = time.perf_counter() - probe[0]
    own, busy = _cpu_seconds()
    if busy is None or probe[2] is None:
        return {"others_share": None}
    others = max(0.0, (busy - probe[2]) - (own - probe[1]))
    return {"others_share": others / (wall * (os.cpu_count() or 1)), "others_cpu_s": others}


def command(args) -> str:
    only = f" --only {args.only}" if args.only else ""
    return (
        f"python benchmarks/real/recover.py --threads {args.threads}"
        + (" --quick" if args.quick else "")
        + only
    )


def _reused_line(result: dict) -> list[str]:
    if "reused" not in result:
        return []
    r = result["reused"]
    others = "?" if r.get("others_share") is None else f"{r['others_share']:.0%}"
    return [
        f"Measured by an earlier run (`{r['command']}`, {r['date']}, load "
        f"{' '.join(f'{v:.2f}' for v in r['load_start'])} at its start, other processes "
        f"{others} of the CPUs), taken from its JSON with `--reuse`.",
        "",
    ]


def section(env: dict, results: list[dict]) -> str:
    others = env.get("others_share")
    lines = [
        "## real models: recovery without labels",
        "",
        *int8_report.run_lines(
            env,
            "; other processes used "
            + ("an unknown share" if others is None else f"{others:.0%}")
            + " of the CPUs over the run (a shared machine: compare ratios within one table)",
        ),
        "",
        "Fidelity is to the fp32 model on the evaluation inputs (metrics.py), never seen in "
        "training. recovered: (pruned+distilled - pruned) / (fp32 - pruned) of the primary "
        "figure and of cosine. MACs: mcomp's count over the baseline's. weight zeros: zero "
        "elements of the file's weight initializers. size: file bytes / fp32's (zlib: level "
        "9). fp32/x > 1: faster than fp32; ms: median of per-round medians (min-max), every "
        "file timed side by side in this process, each in its own block. stage s: the mcomp "
        "report's stage seconds.",
        "",
    ]
    for result in results:
        if "error" in result:
            lines += [f"### {result['name']}", "", model_table(result)]
            continue
        counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
        stages = result["recipes"]["chain"].split("stages:\n")[1].split("output:")[0]
        lines += [
            f"### {result['name']}",
            "",
            f"`{result['source']}`, input {'x'.join(map(str, result['shape']))}; samples: "
            f"{counts} (train: distillation inputs; val: the recipes' eval split; eval: "
            "every figure below)",
            "",
            "The recipe's stages (`prune -> export` alone gives the pruned row):",
            "",
            "```yaml",
            "stages:",
            *stages.rstrip("\n").splitlines(),
            "```",
            "",
            *_reused_line(result),
            model_table(result),
            *[f"- {t}" for t in result["targets"]],
            "",
        ]
    return "\n".join(lines) + "\n"
