"""Checks every command makes before any work, and result files that never lose the result.

* :func:`check_options`: ``--device``, ``--threads``, ``--frames``, ``--vision-batch`` (one
  ``ValueError`` naming the option, before a model is loaded).
* :func:`check_destination`: a ``--json`` file must be writable before the work starts (a
  missing folder, a directory, ``/proc/x.json`` fail at once, not after the generation).
* :func:`write_json`: if writing still fails at the end, the error names the option and says
  the result was printed to stdout; :func:`write_then_print` writes first (a closed stdout does
  not lose the file), shows the result, then reports a failed write.
* :func:`as_flags`: a library error about ``max_new_tokens`` speaks of ``--max-new-tokens``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["as_flags", "check_destination", "check_options", "write_json", "write_then_print"]

# SamplingParams fields -> the run/bench options that set them.
_FLAGS = {
    "max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k",
    "repetition_penalty": "--repetition-penalty", "seed": "--seed", "stop_strings": "--stop",
}


def as_flags(exc: ValueError) -> ValueError:
    """``exc`` with a leading sampling field name replaced by its option (``temperature`` ->
    ``--temperature``); other messages unchanged."""
    text = str(exc)
    for field, flag in _FLAGS.items():
        if text.startswith(field + " "):
            return ValueError(flag + text[len(field):])
    return exc


def check_options(args) -> None:
    """The options of ``run`` and ``bench`` that name a device or a count (those present)."""
    from slowfast_trt.runtime.arguments import check_device

    check_device(getattr(args, "device", None), name="--device")
    for flag, name in (("--threads", "threads"), ("--vision-batch", "vision_batch"), ("--frames", "frames")):
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and v < 1 for v in values):
            raise ValueError(f"{flag} must be >= 1, got {value}")


def check_destination(path: str | os.PathLike | None, flag: str = "--json") -> None:
    """Fail now, naming ``flag``, when ``path`` cannot be written (nothing is left behind)."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give a file name")
    if not target.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {target.parent} does not exist")
    existed = target.exists()
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    if not existed:
        target.unlink(missing_ok=True)


def write_then_print(path: str | os.PathLike | None, data, show, flag: str = "--json", printed: str = "the result") -> None:
    """Write ``data`` to ``path`` (if given), then ``show()`` it on stdout, then raise the write's
    error if it failed: the file is written even when stdout is a closed pipe, and the result is
    shown even when the file cannot be written."""
    failed = None
    if path is not None:
        try:
            write_json(path, data, flag, printed)
        except OSError as exc:
            failed = exc
    show()
    if failed is not None:
        raise failed


def write_json(path: str | os.PathLike, data, flag: str = "--json", printed: str = "the answer") -> None:
    """Write ``data`` as JSON; an ``OSError`` naming ``flag`` (and that ``printed`` went to
    stdout) when the file cannot be written."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OSError(f"{flag} {path}: cannot write the result ({exc.strerror or exc}); {printed} "
                      "was printed to stdout") from None
