"""Live streams: ``POST/GET/DELETE /v1/streams`` and ``stream://ID`` in chat requests.

``SlowFastRuntime.open_stream(window=N, policy=..., sample_fps=F, source=...)`` reads the
source on its own threads and encodes frames as they arrive; a question about ``stream://ID``
is answered over the frames the window holds then (no vision work at question time). A
stream keeps one conversation on the server: a chat request with no earlier turns starts it
over, one with earlier turns continues it. When the runtime has no ``open_stream``, every
stream endpoint answers 501.

Sources a client may name: a ``file://`` path inside ``--media-dir``, an uploaded video's
id, or a network URL (rtsp, rtmp, http(s), udp, srt; refused with ``--no-http-media``).
Device paths and other local paths are refused: the server reads only what it was given.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from .errors import APIError
from .scheduler import stopped_error
from .schemas import StreamRequest
from .security import media_path

__all__ = ["LiveStreams"]

_NETWORK = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "srt", "tcp")
_FIRST_FRAME_S = 10.0  # how long a question waits for a stream's first frame


def _unavailable() -> APIError:
    return APIError(501, "live streams are not available: this runtime has no SlowFastRuntime.open_stream",
                    code="streams_unavailable")


class LiveStreams:
    """Open live streams by id. ``call`` runs a function on the model thread."""

    def __init__(self, runtime, call, config=None, store=None, uploads=None):
        self._open = getattr(runtime, "open_stream", None)
        self._call = call
        self._config, self._store, self._uploads = config, store, uploads
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, Any]] = {}

    @property
    def available(self) -> bool:
        return callable(self._open)

    def create(self, request: StreamRequest) -> dict:
        if not self.available:
            raise _unavailable()
        source, blob = self._source(request.source)
        options = {"window": request.window, "policy": request.policy, "sample_fps": request.fps, "source": source}
        try:
            handle = self._call(lambda: self._open(**options))
        except (ValueError, TypeError) as exc:
            if blob is not None:
                self._store.release(blob)
            raise APIError(400, f"source: {exc}", param="source") from None
        stream_id = "stream-" + secrets.token_hex(12)
        with self._lock:
            self._streams[stream_id] = {"handle": handle, "source": request.source, "created_at": int(time.time()),
                                        "blob": blob}
        return self.describe(stream_id)

    def describe(self, stream_id: str) -> dict:
        entry = self._entry(stream_id)
        handle = entry["handle"]
        stats = handle.stats() if callable(getattr(handle, "stats", None)) else {}
        return {"id": stream_id, "object": "stream", "source": entry["source"], "created_at": entry["created_at"],
                "ended": getattr(handle, "ended", None), "stats": stats}

    def delete(self, stream_id: str) -> dict:
        entry = self._entry(stream_id)
        with self._lock:
            self._streams.pop(stream_id, None)
        self._close(entry)
        return {"id": stream_id, "object": "stream", "deleted": True}

    def answer(self, job, work, engine):
        """A chat turn about a live stream (on the model thread)."""
        handle = self._entry(work.media.stream_id)["handle"]
        if not work.plan.history:
            handle.reset()  # a new conversation about the stream
        handle.wait_for_frames(1, timeout=_FIRST_FRAME_S)
        try:
            pieces = handle.ask_stream(work.plan.question, **work.sampling)
        except ValueError as exc:  # no frame yet, the stream closed
            raise APIError(400, f"stream: {exc}", param="messages") from None
        for piece in pieces:
            if work.stream:
                job.emit("piece", piece)
            reason = job.stop_reason()
            if reason:
                pieces.close()
                raise stopped_error(reason)
        return engine._outcome(job, pieces.result, None, False)

    def close(self) -> None:
        """Close every stream (the model thread may be gone: the runtime's own lock guards this)."""
        with self._lock:
            entries, self._streams = list(self._streams.values()), {}
        for entry in entries:
            self._close(entry)

    def _close(self, entry: dict) -> None:
        try:
            entry["handle"].close()
        finally:
            if entry["blob"] is not None:
                self._store.release(entry["blob"])

    def _source(self, url: str):
        """(what open_stream reads, a held blob or None) for a client's source URL."""
        scheme = urlsplit(url).scheme.lower() if "://" in url or url.startswith("file:") else ""
        if scheme == "file":
            return str(media_path(self._config.media_dir, url)), None
        if url.startswith("video-") or scheme == "video":
            upload = self._uploads.get(url.split("://", 1)[-1])
            blob = self._store.acquire(upload.blob)
            return str(blob.path), blob
        if scheme in _NETWORK:
            if not self._config.http_media:
                raise APIError(400, "network stream sources are disabled on this server (--no-http-media)",
                               param="source")
            return url, None
        raise APIError(400, f"source {url[:60]!r}: use a file:// path inside --media-dir, an uploaded video's id or a "
                            f"network URL ({', '.join(_NETWORK)})", param="source", code="bad_media_url")

    def _entry(self, stream_id: str) -> dict:
        if not self.available:
            raise _unavailable()
        with self._lock:
            entry = self._streams.get(stream_id)
        if entry is None:
            raise APIError(404, f"no live stream with id {stream_id!r}", param="id", code="stream_not_found")
        return entry
