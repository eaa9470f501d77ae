"""Tables for the companion commands (inspect, bench, compare, eval), printed on stdout."""

from __future__ import annotations

import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from mcomp.cli.render import columns_off_terminal, human_bytes, human_count

PROFILE_ROWS = 12  # op types shown by `mcomp bench --profile` (the JSON has them all)


def stdout_console() -> Console:
    """stdout console; off a terminal $COLUMNS wide, else 150 (CI logs: no wrapping)."""
    return Console(width=None if sys.stdout.isatty() else columns_off_terminal(), highlight=False)


def _table(title: str, headers: list[str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < 2 else "right")
    return table


def render_inspect(result: dict[str, Any]) -> None:
    table = _table(
        f"{result['model']} ({result['format']})",
        ["layer", "type", "shape", "params", "non-zero", "sparsity", "MACs", "dtype"],
    )
    for row in result["layers"]:
        table.add_row(
            row["name"],
            row["type"],
            "×".join(map(str, row["shape"])) or "-",
            f"{row['params']:,}",
            f"{row['nonzero']:,}",
            f"{row['sparsity']:.1%}",
            "-" if row["macs"] is None else human_count(row["macs"]),
            row["dtype"],
        )
    t = result["totals"]
    table.add_section()
    table.add_row(
        "total",
        f"{len(result['layers'])} layers",
        "",
        f"{t['params']:,}",
        f"{t['nonzero']:,}",
        f"{t['sparsity']:.1%}",
        "-" if t["macs"] is None else human_count(t["macs"]),
        f"{t['int8_layers']} int8",
    )
    stdout_console().print(table)


def render_bench(result: dict[str, Any]) -> None:
    table = _table(
        f"{result['model']}: onnxruntime CPU, {result['threads']} thread(s), {result['runs']} runs",
        ["batch", "", "p50 ms", "p90 ms", "mean ms", "samples/s"],
    )
    for row in result["batches"]:
        table.add_row(
            str(row["batch"]),
            "",
            f"{row['p50_ms']:.4g}",
            f"{row['p90_ms']:.4g}",
            f"{row['mean_ms']:.4g}",
            f"{row['throughput_per_s']:,.0f}",
        )
    console = stdout_console()
    console.print(table)
    memory = result["memory"]["session_peak_bytes"]
    console.print(
        f"session peak memory: {human_bytes(memory)}   "
        f"CPU: {', '.join(result['cpu_isa']) or 'unknown ISA'}   "
        f"inputs: {result['inputs_from']}"
    )
    profile = result.get("profile")
    if profile:
        table = _table(
            f"kernel time per op type at batch {profile['batch']}: "
            f"{profile['kernel_ms']:.4g} ms, {profile['quantized_kernel_share']:.0%} "
            "in int8 kernels",
            ["op", "", "ms", "share", "int8"],
        )
        for row in profile["ops"][:PROFILE_ROWS]:
            table.add_row(
                row["op"],
                "",
                f"{row['ms']:.4g}",
                f"{row['share']:.1%}",
                "yes" if row["quantized"] else "",
            )
        console.print(table)


def render_compare(result: dict[str, Any]) -> None:
    table = _table("B / A < 1: B is smaller or faster", ["figure", "", "A", "B", "B / A"])
    for name, pair in result["figures"].items():
        table.add_row(
            result["metric_name"] if name == "metric" else name,
            "",
            _fmt(pair["a"]),
            _fmt(pair["b"]),
            "-" if pair["ratio_b_over_a"] is None else f"{pair['ratio_b_over_a']:.3g}",
        )
    console = stdout_console()
    console.print(f"A: {result['a']}\nB: {result['b']}")
    console.print(table)
    agreement = result["agreement"]
    if agreement["comparable"]:
        top1 = agreement.get("top1_agreement")
        console.print(
            f"outputs on {result['samples']} samples: max |A-B| "
            f"{agreement['max_abs_diff']:.3g}, mean |A-B| "
            f"{agreement['mean_abs_diff']:.3g}, cosine {agreement['cosine']:.4f}"
            + ("" if top1 is None else f", top-1 agreement {top1:.4f}")
        )
    else:
        console.print(f"outputs: {agreement['note']}")


def render_eval(result: dict[str, Any]) -> None:
    click_line = f"{result['metric_name']}: {result['metric']:.4f} ({result['samples']} samples)"
    stdout_console().print(click_line)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}"
