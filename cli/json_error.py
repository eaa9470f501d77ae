"""Machines always get JSON: with `--json`, a failing command prints one error object on
stdout (the red line still goes to stderr), whatever failed — the recipe, the data, a click
usage error such as a bad option value:

    {"ok": false, "error": {"type": "RecipeError", "message": "r.yaml:3:5: ...",
                            "exit_code": 2, "file": "r.yaml", "line": 3, "column": 5}}
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

LOCATION = ("file", "key", "line", "column")


def error_object(exc: BaseException | None, message: str, code: int) -> dict[str, Any]:
    """The JSON error document for `exc` (None: `message` alone)."""
    error: dict[str, Any] = {
        "type": type(exc).__name__ if exc is not None else "Error",
        "message": message,
        "exit_code": code,
    }
    for name in LOCATION:
        value = getattr(exc, name, None)
        if isinstance(value, str | int):
            error[name] = value
    return {"ok": False, "error": error}


def emit_json_error(message: str, code: int) -> None:
    """Print the error object on stdout when the running command was given --json; called by
    the error boundary while it handles the exception."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not ctx.params.get("as_json"):
        return
    exc = sys.exc_info()[1]
    text = str(exc) if exc is not None and str(exc) else message
    click.echo(json.dumps(error_object(exc, text, code)))


class JsonErrorGroup(click.Group):
    """The command group: click's own usage errors (bad option values, missing arguments)
    become a JSON error object too when the command line asks for --json."""

    def main(self, args=None, *posargs, **kwargs):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().main(args, *posargs, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if "--json" in getattr(self, "_argv", []):
                click.echo(json.dumps(error_object(exc, exc.format_message(), exc.exit_code)))
            raise
