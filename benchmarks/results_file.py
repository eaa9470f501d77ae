"""benchmarks/RESULTS.md: each script owns one `## ` section and replaces only that."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

RESULTS_PREAMBLE = """# Benchmark results

Written by the scripts in this folder (see README.md); each section names the command and
the date that produced it. Rerunning a command replaces its section.
"""


def update_results(path: Path, section: str) -> None:
    """Replace the section whose `## ` heading (the section's first line) matches, or append
    it; keep the rest of the file."""
    heading = section.splitlines()[0]
    text = path.read_text() if path.exists() else RESULTS_PREAMBLE
    lines = text.splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = section.rstrip("\n").splitlines() + [""]
    else:
        lines += ["", *section.rstrip("\n").splitlines()]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves a half-written results file.
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text("\n".join(lines).rstrip("\n") + "\n")
    os.replace(temporary, path)


def provenance(script: str, load_start: tuple[float, ...]) -> list[str]:
    """The `- Command:` and `- Date:` lines of a section: this process's arguments and
    the load average when it started (`os.getloadavg()`) and now."""
    command = shlex.join(["python", script, *sys.argv[1:]])
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        f"- Command: `{command}`",
        f"- Date: {now}; load average start {' '.join(f'{x:.2f}' for x in load_start)}, "
        f"end {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
