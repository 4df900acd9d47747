"""Live streams: ``POST/GET/DELETE /v1/streams`` and ``stream://ID`` in chat requests.

Live capture is ``SlowFastRuntime.open_stream(source, window=N, ...)``, built separately;
this module is the only place that calls it. Until the runtime has it, :attr:`available`
is False and every stream endpoint answers 501 with a JSON error. What this expects of the
handle ``open_stream`` returns: ``stream(question, **sampling)`` like a ``VideoSession``
(a ``TextStream`` with ``.result``), ``close()``, and optionally ``info()`` (a dict).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from .errors import APIError
from .scheduler import stopped_error
from .schemas import StreamRequest

__all__ = ["LiveStreams"]


def _unavailable() -> APIError:
    return APIError(501, "live streams are not available: this runtime has no SlowFastRuntime.open_stream yet",
                    code="streams_unavailable")


class LiveStreams:
    """Open live streams by id; every runtime call goes through ``call`` (the model thread)."""

    def __init__(self, runtime, call):
        self._open = getattr(runtime, "open_stream", None)
        self._call = call
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, Any]] = {}

    @property
    def available(self) -> bool:
        return callable(self._open)

    def create(self, request: StreamRequest) -> dict:
        if not self.available:
            raise _unavailable()
        options = {"window": request.window} | ({"fps": request.fps} if request.fps is not None else {})
        try:
            handle = self._call(lambda: self._open(request.source, **options))
        except (ValueError, TypeError) as exc:
            raise APIError(400, f"source: {exc}", param="source") from None
        stream_id = "stream-" + secrets.token_hex(12)
        with self._lock:
            self._streams[stream_id] = {"handle": handle, "source": request.source, "created_at": int(time.time()),
                                        "window": request.window}
        return self.describe(stream_id)

    def describe(self, stream_id: str) -> dict:
        entry = self._entry(stream_id)
        info = entry["handle"].info() if callable(getattr(entry["handle"], "info", None)) else {}
        return {"id": stream_id, "object": "stream", "source": entry["source"], "window": entry["window"],
                "created_at": entry["created_at"], "info": info}

    def delete(self, stream_id: str) -> dict:
        entry = self._entry(stream_id)
        with self._lock:
            self._streams.pop(stream_id, None)
        self._call(entry["handle"].close)
        return {"id": stream_id, "object": "stream", "deleted": True}

    def answer(self, job, work, engine):
        """A chat turn about a live stream (on the model thread)."""
        handle = self._entry(work.media.stream_id)["handle"]
        pieces = handle.stream(work.plan.question, **work.sampling)
        for piece in pieces:
            if work.stream:
                job.emit("piece", piece)
            reason = job.stop_reason()
            if reason:
                pieces.close()
                raise stopped_error(reason)
        return engine._outcome(job, pieces.result, None, False)

    def close(self) -> None:
        with self._lock:
            entries, self._streams = list(self._streams.values()), {}
        for entry in entries:
            self._call(entry["handle"].close)

    def _entry(self, stream_id: str) -> dict:
        if not self.available:
            raise _unavailable()
        with self._lock:
            entry = self._streams.get(stream_id)
        if entry is None:
            raise APIError(404, f"no live stream with id {stream_id!r}", param="id", code="stream_not_found")
        return entry
