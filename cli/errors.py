"""The one error boundary: domain errors become one red line on stderr and exit code 2;
Ctrl-C exits 130 and SIGTERM 143, each with one line that says what was left behind."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

EXIT_OK, EXIT_LIMIT_BROKEN, EXIT_BAD_INPUT = 0, 1, 2


def error_boundary(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; turn MCompError (and anything unexpected) into one line + exit 2.

    SIGTERM is handled like Ctrl-C (an exception, so every cleanup runs): exit 143 and 130.
    `--debug` re-raises so the traceback shows.
    """

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mcomp.errors import MCompError
        from mcomp.interrupt import (
            EXIT_INTERRUPTED,
            EXIT_TERMINATED,
            Terminated,
            handle_termination,
            outcome_of,
        )

        debug = kwargs.get("debug", False)
        try:
            with handle_termination():
                return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except MCompError as exc:
            if debug:
                raise
            _fail(f"error: {exc}", exc.exit_code)
        except KeyboardInterrupt as exc:
            _fail(f"interrupted; {outcome_of(exc)}", EXIT_INTERRUPTED)
        except Terminated as exc:
            _fail(f"terminated (SIGTERM); {outcome_of(exc)}", EXIT_TERMINATED)
        except Exception as exc:
            if debug:
                raise
            # Every mistake a user can make has a typed error; reaching this line is not
            # the user's fault.
            _fail(
                f"unexpected error: {type(exc).__name__}: {str(exc)[:300]}; this is a bug in "
                "mcomp, please report it with the output of the same command run with --debug",
                EXIT_BAD_INPUT,
            )

    return wrapper


def _fail(message: str, code: int) -> None:
    from mcomp.cli.json_error import emit_json_error

    # one line whatever the message quotes: a key named "\r" or an escape sequence from a
    # hostile file must not split the line or reach the terminal raw
    text = " ".join(message.splitlines())
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)
    emit_json_error(text, code)  # with --json: the error as JSON on stdout too
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: say which process failed
        text = f"rank {os.environ.get('RANK', '?')}: {text}"
    if sys.stderr.isatty():
        click.secho(f"mcomp: {text}", fg="red", err=True)
    else:
        click.echo(f"mcomp: {text}", err=True)
    sys.exit(code)
