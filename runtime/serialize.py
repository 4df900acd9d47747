"""Calls from several threads: one engine call at a time, and one clear error for closed objects.

A ``SlowFastRuntime``, its video sessions and its live streams share one re-entrant lock,
``RuntimeModel.lock``. What holds it, and for how long:

| call                                              | holds the lock                                  |
|---------------------------------------------------|-------------------------------------------------|
| ``generate``, ``VideoSession.ask``                | the whole call (prefill and every decode step)  |
| ``encode_video``, ``open_video``                  | the encode (vision, pooling, slow K/V), not the video file's decoding |
| a ``TextStream``'s next piece (``stream``)        | the prefill, then each decode step               |
| a live stream's ``push`` / question               | its frame's encode / its prefill and each step (``runtime.stream``) |
| ``close``                                         | while caches and engines are released            |

So no two threads ever drive an engine, a decoder runner or a KV cache at once, and answers
equal the single-threaded ones (each session owns its KV cache and each generation its
sampler). A second call waits for the lock; with ``blocking=False`` it raises
:class:`RuntimeBusyError` instead when another thread holds it. A session answers one question
at a time: a question asked while an earlier answer of the same session is still being
streamed takes over the session, and the earlier stream ends with a ``ValueError`` at its next
piece (never silently continuing on a cache that no longer holds its rows). A closed runtime,
session or stream raises :class:`ClosedError` (a ``ValueError``), one line saying what to do.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["CallGate", "ClosedError", "RuntimeBusyError", "locked_steps"]


class RuntimeBusyError(RuntimeError):
    """``blocking=False`` and another thread is running a call on the same runtime."""


class ClosedError(ValueError):
    """A runtime, session or stream used after ``close()``."""


class CallGate:
    """The lock of one runtime plus its closed state (module docstring)."""

    def __init__(self, lock: threading.RLock, closed_message: str):
        self.lock = lock
        self.closed = False
        self._closed_message = closed_message

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(self._closed_message)

    @contextmanager
    def call(self, blocking: bool = True) -> Iterator[None]:
        """Hold the lock for one call; ``blocking=False``: :class:`RuntimeBusyError` if taken."""
        self.check_open()
        if not isinstance(blocking, bool):
            raise ValueError(f"blocking must be True or False, got {blocking!r}")
        if not self.lock.acquire(blocking=blocking):
            raise RuntimeBusyError("the SlowFastRuntime is busy with a call from another thread (blocking=False); "
                                   "retry later, or call with blocking=True to wait for it")
        try:
            self.check_open()  # closed while this call waited
            yield
        finally:
            self.lock.release()

    def probe(self, blocking: bool = True) -> None:
        """Fail now as :meth:`call` would (closed, or busy with ``blocking=False``), before
        work done outside the lock (decoding a video file)."""
        with self.call(blocking):
            pass

    def close(self) -> bool:
        """Mark closed once a call in progress has ended; True the first time."""
        with self.lock:
            first, self.closed = not self.closed, True
        return first


def locked_steps(lock: threading.RLock, steps: Iterator[int], check: Callable[[], None],
                 on_end: Callable[[], None] = lambda: None) -> Iterator[int]:
    """Yield from ``steps`` with ``lock`` held while each item is produced; ``check()`` before
    each (it raises when the session closed or another question took it over); ``on_end()``
    under the lock once ``steps`` is exhausted. Closing this generator closes ``steps`` under
    the lock (its cleanup may run engines)."""
    try:
        while True:
            with lock:
                check()
                try:
                    item = next(steps)
                except StopIteration:
                    on_end()
                    return
            yield item
    finally:
        with lock:
            steps.close()
