"""`mcomp report OLD NEW --fail-on CONDITIONS`: when a run's change from the previous one
should fail a CI job.

Grammar (docs/report.md), whitespace ignored:

    conditions := condition ("," condition)*
    condition  := FIGURE OP CHANGE
    OP         := "<" | "<=" | ">" | ">="
    CHANGE     := ["+" | "-"] NUMBER ["%"]

A condition names a *failure*: it is broken when `new - old` (with `%`: that change as a
percentage of `|old|`) compares with CHANGE as OP says. FIGURE is a name of
`mcomp.report.saved.FIGURES` (metric, size, compressed, params, macs, speedup_batch, ...).

    metric<-0.005         the metric fell by more than 0.005
    size>+5%              the file grew by more than 5 %
    speedup_batch<-10%    the speed-up over the baseline shrank by more than 10 %
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import Any

from mcomp.errors import ConditionError
from mcomp.report.saved import FIGURES, figure_value

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
PATTERN = re.compile(
    r"^(?P<figure>[A-Za-z_][\w.]*)\s*(?P<op><=|>=|<|>)\s*(?P<value>[+-]?[\d.]+(?:e[+-]?\d+)?)"
    r"\s*(?P<percent>%?)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Condition:
    """One parsed condition: broken when the change of `figure` compares as `op` says."""

    text: str
    figure: str
    op: str
    threshold: float
    relative: bool

    def check(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """The change between the reports and whether it breaks this condition."""
        before, after = figure_value(old, self.figure), figure_value(new, self.figure)
        if before is None or after is None:
            which = "OLD" if before is None else "NEW"
            raise ConditionError(
                f"--fail-on {self.text!r}: the {which} report has no {self.figure!r} "
                f"({FIGURES[self.figure][0]}; e.g. latency not timed); drop the condition"
            )
        change = after - before
        if self.relative:
            if before == 0:
                raise ConditionError(
                    f"--fail-on {self.text!r}: {self.figure} was 0 in the OLD report, so a "
                    "change in % is undefined; give an absolute change (no %)"
                )
            change = 100.0 * change / abs(before)
        return {
            "condition": self.text,
            "figure": self.figure,
            "old": before,
            "new": after,
            "change": change,
            "unit": "%" if self.relative else "",
            "broken": OPERATORS[self.op](change, self.threshold),
        }


def parse_conditions(text: str) -> list[Condition]:
    """Every condition of a comma-separated list; ConditionError names the bad one."""
    if not text.strip():
        raise ConditionError("--fail-on: no condition given; e.g. --fail-on 'metric<-0.005'")
    return [_parse_one(part.strip(), text) for part in text.split(",")]


def _parse_one(part: str, whole: str) -> Condition:
    if not part:
        raise ConditionError(
            f"--fail-on {whole!r}: an empty condition (two commas, or one at an end)"
        )
    match = PATTERN.match(part)
    if match is None:
        raise ConditionError(f"--fail-on {part!r}: {_why(part)}")
    figure = match["figure"].lower()
    if figure not in FIGURES:
        close = difflib.get_close_matches(figure, FIGURES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConditionError(
            f"--fail-on {part!r}: unknown figure {figure!r}{hint}; figures are: "
            + ", ".join(FIGURES)
        )
    try:
        threshold = float(match["value"])
    except ValueError:
        raise ConditionError(f"--fail-on {part!r}: {match['value']!r} is not a number") from None
    return Condition(part, figure, match["op"], threshold, bool(match["percent"]))


def _why(part: str) -> str:
    """What is wrong with a condition the pattern refused, as precisely as can be said."""
    if re.search(r"==|!=|=(?![<>])|(?<![<>])=", part):
        return "use <, <=, > or >= (a condition says when to fail, e.g. size>+5%)"
    if not re.search(r"[<>]", part):
        return "expected FIGURE<CHANGE or FIGURE>CHANGE, e.g. metric<-0.005 or size>+5%"
    value = re.split(r"<=|>=|<|>", part, maxsplit=1)[1].strip()
    if not value:
        return "the change is missing after the operator, e.g. size>+5%"
    return f"{value!r} is not a change such as -0.005, +5% or 10"


def check_conditions(
    conditions: list[Condition], old: dict[str, Any], new: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each condition's result; a metric condition needs both runs to measure the same metric."""
    old_name = (old["final"]["metrics"] or {}).get("metric_name")
    new_name = (new["final"]["metrics"] or {}).get("metric_name")
    for condition in conditions:
        if condition.figure == "metric" and old_name != new_name:
            raise ConditionError(
                f"--fail-on {condition.text!r}: the reports measure different metrics "
                f"({old_name} vs {new_name}); compare runs of the same task"
            )
    return [condition.check(old, new) for condition in conditions]
