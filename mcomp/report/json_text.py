"""Serialise the report: stable key order, no NaN (JSON has none)."""

from __future__ import annotations

import json
import math
from typing import Any


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(_clean(report), indent=2) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
