"""Checks of ``SlowFastRuntime.load``'s device and thread arguments: one ``ValueError`` naming the
argument, before anything is loaded (torch's own errors are a RuntimeError listing every device
type it knows, or an AssertionError from deep in its CUDA initialisation)."""

from __future__ import annotations

import torch

__all__ = ["check_device", "check_threads"]


def check_device(device, name: str = "device") -> torch.device | None:
    """``device`` (None, a string or a ``torch.device``) as a CPU or usable CUDA device."""
    if device is None:
        return None
    if isinstance(device, str):
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"{name} must be cpu, cuda or cuda:N, got {device!r}") from None
    elif isinstance(device, torch.device):
        parsed = device
    else:
        raise ValueError(f"{name} must be cpu, cuda or cuda:N, got {type(device).__name__} {device!r}")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
            raise ValueError(f"{name} {device!r}: no CUDA device is available ({why}); use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: there are {torch.cuda.device_count()} CUDA devices (cuda:0..)")
    return parsed


def check_threads(threads, name: str = "threads") -> None:
    """None (the library's default) or an integer >= 1."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {threads!r}")
