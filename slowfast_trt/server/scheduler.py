"""One model thread and a bounded queue in front of it.

The runtime runs one generation at a time, so requests are served in turn: first come,
first served, each to its end (or until its client leaves or its time runs out). A full
queue answers 429 with ``Retry-After`` estimated from recent request times. A job talks
back to its request through an asyncio queue of events: ``("piece", text)`` while it
generates, then ``("done", outcome)`` or ``("error", APIError)``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from typing import Any, Callable

from .errors import APIError

__all__ = ["Job", "Scheduler", "stopped_error"]

log = logging.getLogger("slowfast_trt.server")


class Job:
    """One request's work for the model thread."""

    def __init__(self, fn: Callable[["Job"], Any], loop: asyncio.AbstractEventLoop | None, timeout_s: float):
        self.fn = fn
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.deadline = self.submitted + timeout_s
        self._cancel_reason: str | None = None
        self._finalizers: list[Callable[[], None]] = []
        self.finished = False

    def on_finish(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the job is over: run, skipped, discarded or dropped at shutdown."""
        self._finalizers.append(fn)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for fn in self._finalizers:
            try:
                fn()
            except Exception:
                log.exception("job cleanup failed")

    def emit(self, kind: str, value: Any) -> None:
        """Send an event to the waiting request (called from the model thread)."""
        if self.loop is None:
            self.events.put_nowait((kind, value))
        else:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def cancel(self, reason: str) -> None:
        if self._cancel_reason is None:
            self._cancel_reason = reason

    def stop_reason(self) -> str | None:
        """Why this job should stop now ("disconnect", "timeout"), or None to go on."""
        if self._cancel_reason is None and time.monotonic() > self.deadline:
            self._cancel_reason = "timeout"
        return self._cancel_reason

    @property
    def queue_s(self) -> float:
        return (self.started or time.monotonic()) - self.submitted


class Scheduler:
    """A FIFO of at most ``max_queue`` waiting jobs, run one at a time on one thread."""

    def __init__(self, max_queue: int, on_cancel: Callable[[str], None] = lambda reason: None):
        self.max_queue = max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._avg_s = 1.0  # moving average of a job's run time, for Retry-After
        self._on_cancel = on_cancel
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="slowfast-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, fn: Callable[[Job], Any], timeout_s: float) -> Job:
        """Queue ``fn(job)`` for the model thread; a full queue is a 429."""
        job = Job(fn, _loop(), timeout_s)
        with self._cond:
            if self._closed:
                raise APIError(500, "the server is shutting down")
            if len(self._queue) >= self.max_queue:
                wait = max(1, math.ceil(self._avg_s * (len(self._queue) + 1)))
                raise APIError(429, f"the server is busy: {len(self._queue)} requests are waiting; retry in {wait} s",
                               code="queue_full", headers={"Retry-After": str(wait)})
            self._queue.append(job)
            self._cond.notify()
        return job

    def discard(self, job: Job) -> None:
        """Take a job that has not started out of the queue (its client left)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return
        reason = job.stop_reason() or "disconnect"
        self._on_cancel(reason)
        job.emit("error", stopped_error(reason))
        job.finish()

    def call(self, fn: Callable[[], Any], timeout_s: float = 600.0) -> Any:
        """Run ``fn`` on the model thread and wait for it (from a thread other than it)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def work(job: Job):
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                done.set()

        job = Job(work, None, timeout_s)
        with self._cond:
            self._queue.appendleft(job)  # housekeeping goes before waiting requests
            self._cond.notify()
        if not done.wait(timeout_s):
            raise APIError(504, "the model thread did not answer in time")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self.running is not None:
                self.running.cancel("shutdown")  # stop the generation in progress at its next token
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.emit("error", APIError(500, "the server is shutting down"))
            job.finish()
        self._thread.join(timeout=60)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            return self._queue.popleft() if self._queue else None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            job.started = time.monotonic()
            reason = job.stop_reason()
            if reason is not None:
                self._on_cancel(reason)
                job.emit("error", stopped_error(reason))
                job.finish()
                continue
            self.running = job
            try:
                job.emit("done", job.fn(job))
            except APIError as exc:
                job.emit("error", exc)
            except Exception:  # a bug: log it here, never send it to the client
                log.exception("request failed")
                job.emit("error", APIError(500, "internal server error (see the server log)"))
            finally:
                job.finish()
                self.running = None
                self._avg_s = 0.8 * self._avg_s + 0.2 * (time.monotonic() - job.started)


def stopped_error(reason: str) -> APIError:
    if reason == "timeout":
        return APIError(504, "the request ran past the server's time limit (--request-timeout)", code="timeout")
    if reason == "shutdown":
        return APIError(500, "the server is shutting down", code="shutdown")
    return APIError(400, "the client disconnected", code="client_disconnected")


def _loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
