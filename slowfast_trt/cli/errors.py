"""The one error wrapper of every command: documented errors become one ``error: ...`` line.

Every CLI's ``main`` parses its arguments with argparse (exit 2 on bad arguments, argparse's own
convention), then runs its body through :func:`run_cli`:

| what the body raises                      | printed on stderr          | exit |
|-------------------------------------------|----------------------------|-----:|
| ``ValueError`` (bad input, named), ``OSError`` (a file) | ``error: <first line>`` | 2 |
| ``KeyboardInterrupt`` (Ctrl-C)            | nothing                    | 130  |
| ``BrokenPipeError`` (``... | head``)       | nothing                    | 0    |

Library code raises ``ValueError`` naming the argument, file, key, shape or limit; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

__all__ = ["USER_ERRORS", "error_line", "run_cli"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def error_line(exc: BaseException) -> str:
    """``error: ...`` with the first line of the exception's message (or its type when empty)."""
    text = str(exc).strip().splitlines()
    return f"error: {text[0] if text else type(exc).__name__}"


def run_cli(body: Callable[[], int | None]) -> int:
    """Run ``body`` and map what it raises to an exit status (module table)."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except USER_ERRORS as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return 2


def _silence_stdout() -> None:
    # The reader went away: point stdout at /dev/null so the interpreter's final flush does not
    # raise a second BrokenPipeError at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
