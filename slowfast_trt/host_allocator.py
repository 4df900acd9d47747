"""glibc malloc settings for eager PyTorch on the CPU.

Eager PyTorch allocates every intermediate of the vision tower afresh (a 4-frame batch of the
tiny tower: ~20 MB tensors, dozens per batch). glibc serves such sizes with ``mmap`` or trims
them off the heap on ``free`` once its dynamic thresholds have moved, so each call faults the
pages in again: measured on the 2-core CPU machine, 16 frames of the tiny tower took 490-520 ms
after a first answer against 300-330 ms with the thresholds fixed (``docs/performance.md``).
ONNX Runtime and TensorRT keep arenas of their own and are not affected.

:func:`keep_freed_memory` fixes ``M_MMAP_THRESHOLD`` at glibc's 64-bit maximum (32 MiB: smaller
blocks come from the heap and are reused) and ``M_TRIM_THRESHOLD`` at 128 MiB (up to that much
freed memory stays mapped for the next call). It is process-wide, so the torch backend applies
it when it loads on the CPU unless ``SLOWFAST_TRT_MALLOC=system``; applications with an
allocator of their own (jemalloc, tcmalloc) are unaffected (mallopt is then absent or inert).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True if glibc took them."""
    if os.environ.get("SLOWFAST_TRT_MALLOC", "").lower() == "system":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
