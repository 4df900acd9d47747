"""The one error wrapper of every command: documented errors become one ``error: ...`` line.

Every CLI's ``main`` parses its arguments with argparse (exit 2 on bad arguments, argparse's own
convention), then runs its body through :func:`run_cli`:

| what the body raises                      | printed on stderr          | exit |
|-------------------------------------------|----------------------------|-----:|
| ``ValueError`` (bad input, named), ``OSError`` (a file) | ``error: <first line>`` | 2 |
| ``MemoryError``                           | ``error: out of memory ...`` | 2  |
| ``KeyboardInterrupt`` (Ctrl-C)            | nothing                    | 130  |
| ``BrokenPipeError`` (``... | head``)       | nothing                    | 0    |

Library code raises ``ValueError`` naming the argument, file, key, shape or limit; anything else
is a bug and keeps its traceback. A command that goes on after an error in one part of its work
(``run --interactive``: one question) runs that part through :func:`attempt`.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

__all__ = ["USER_ERRORS", "attempt", "error_line", "print_out", "run_cli"]

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
    except MemoryError as exc:
        detail = f" ({exc})" if str(exc) else ""
        print(f"error: out of memory{detail}; ask for less (fewer frames, a shorter --max-new-tokens)",
              file=sys.stderr, flush=True)
        return 2


def attempt(body: Callable[[], T]) -> tuple[bool, T | None]:
    """Run one part of a command's work: ``(True, its value)``, or ``(False, None)`` after its
    documented error was printed as one line (the command goes on). Ctrl-C and a closed pipe
    end the whole command (:func:`run_cli`)."""
    try:
        return True, body()
    except BrokenPipeError:
        raise
    except USER_ERRORS as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return False, None


def print_out(*values, end: str = "\n") -> None:
    """Print to stdout now (flushed). When its reader has gone (``... | head``), the rest of
    the output is discarded and the command goes on, so that its ``--json`` file is still
    written; the exit status stays 0."""
    try:
        print(*values, end=end, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # The reader went away: point stdout at /dev/null so the interpreter's final flush does not
    # raise a second BrokenPipeError at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
