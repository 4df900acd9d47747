"""Live frame sources: a file, a network stream or a camera read by PyAV on a reader thread.

    source = LiveSource("udp://127.0.0.1:5000", sample_fps=2)   # or rtsp://, http://, /dev/video0, clip.mp4
    item = source.get(timeout=1.0)        # (uint8 RGB (H, W, 3), stream time s, time.monotonic() at decode) or None
    source.ended                          # None while frames may come; else why not ("end of stream", ...)

The source is opened when :class:`LiveSource` is built (a source that cannot be opened is one
:class:`SourceError`, a ``ValueError``, naming it), then a daemon thread demuxes and decodes
it. Frames are sampled at ``sample_fps`` before they are converted to RGB (one frame per
1 / fps seconds of stream time, the first of each interval), so a 30 fps camera sampled at
2 fps converts 2 frames a second. They wait in a queue of ``queue_size`` frames; when the
consumer (the stream's encoder) falls behind, the oldest waiting frame is dropped and counted
(``stats()["dropped"]``): the backlog never grows, and what is encoded stays recent.

Pacing: a file is read at the speed its timestamps say (``realtime=True``, the default for
files, so a file stands in for a camera); a network stream or a device paces itself
(``realtime=False`` by default). Stream time is seconds from the first frame's timestamp (the
wall clock since opening when frames carry none).

The end: end of file, or a network stream that stops (no packet for ``read_timeout_s``) or
fails, sets ``ended`` ("end of stream", "disconnected: ...") and the queue drains. Frames
whose resolution changes mid-stream are passed on as they are (the runtime resizes every
frame on its own). A display rotation the stream declares is applied to the pixels.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time

import av
import numpy as np

__all__ = ["LiveSource", "SourceError", "is_device", "is_url"]

_NETWORK = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://", "rtp://")


class SourceError(ValueError):
    """A live source that cannot be opened or read; the message names it."""


def is_url(source: str) -> bool:
    return str(source).lower().startswith(_NETWORK)


def is_device(source: str) -> bool:
    return str(source).startswith("/dev/video")


class LiveSource:
    """Frames of ``url`` (file, URL or V4L2 device) on a reader thread; see the module docstring."""

    def __init__(self, url: str | os.PathLike, *, sample_fps: float | None = None, realtime: bool | None = None,
                 queue_size: int = 8, open_timeout_s: float = 10.0, read_timeout_s: float = 10.0):
        self.url = os.fspath(url)
        if sample_fps is not None and (not isinstance(sample_fps, (int, float)) or not math.isfinite(sample_fps)
                                       or sample_fps <= 0):
            raise SourceError(f"{self.url}: sample_fps must be a number > 0 or None, got {sample_fps!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise SourceError(f"{self.url}: queue_size must be an integer >= 1, got {queue_size!r}")
        local = not is_url(self.url) and not is_device(self.url)
        if local and not os.path.isfile(self.url):
            raise SourceError(f"{self.url}: no such file (a live source is a file, an rtsp/rtmp/http/udp URL or "
                              "a V4L2 device such as /dev/video0)")
        self.sample_fps, self.realtime = sample_fps, local if realtime is None else bool(realtime)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._counts = {"decoded": 0, "sampled_out": 0, "queued": 0, "dropped": 0}
        self.ended: str | None = None
        self._stop = threading.Event()
        self._container = self._open(open_timeout_s, read_timeout_s)
        self._thread = threading.Thread(target=self._read, name="slowfast-live-reader", daemon=True)
        self._thread.start()

    def _open(self, open_timeout_s: float, read_timeout_s: float):
        kwargs = {"format": "v4l2"} if is_device(self.url) else {}
        if is_url(self.url):
            # Live: probe about a second of the stream, not FFmpeg's default 5 s, before the first frame.
            kwargs["options"] = {"analyzeduration": "1000000", "probesize": "1000000"}
        try:
            container = av.open(self.url, mode="r", timeout=(open_timeout_s, read_timeout_s), **kwargs)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.url}: cannot open the stream ({exc})") from None
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            container.close()
            raise SourceError(f"{self.url}: no video stream (streams: {kinds})")
        return container

    # -- consumer side ----------------------------------------------------------------------

    def get(self, timeout: float | None = None):
        """The next (frame, timestamp_s, decoded_at), or None when none came within ``timeout``
        (``decoded_at``: ``time.monotonic()`` when the reader had the frame)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def stats(self) -> dict:
        """Frames decoded, sampled out, queued and dropped (the consumer fell behind); the end."""
        return {**self._counts, "waiting": self._queue.qsize(), "ended": self.ended}

    def close(self) -> None:
        """Stop reading (the thread ends at its next frame or timeout); idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)
        if self.ended is None:
            self.ended = "closed"

    # -- reader thread ----------------------------------------------------------------------

    def _read(self) -> None:
        container = self._container
        try:
            stream = container.streams.best("video")
            stream.thread_type = "AUTO"
            state = {"first": None, "wall": None, "bucket": None}
            for frame in container.decode(stream):
                if self._stop.is_set():
                    break
                self._counts["decoded"] += 1
                ts = self._time(frame, state)
                if not self._sampled(ts, state):
                    self._counts["sampled_out"] += 1
                    continue
                self._pace(ts, state)
                self._offer((_to_rgb(frame), ts, time.monotonic()))
            else:
                self.ended = "end of stream"
        except (av.error.FFmpegError, OSError) as exc:
            self.ended = f"disconnected: {exc}"
        except Exception as exc:  # never die silently on a reader thread
            self.ended = f"reader failed: {type(exc).__name__}: {exc}"
        finally:
            if self.ended is None:
                self.ended = "closed"
            container.close()

    def _time(self, frame, state) -> float:
        seconds = frame.time
        if seconds is None:
            seconds = time.monotonic()
        if state["first"] is None:
            state["first"], state["wall"] = seconds, time.monotonic()
        return round(max(0.0, float(seconds - state["first"])), 6)  # microseconds: no 2.5000000000000004

    def _sampled(self, ts: float, state) -> bool:
        if self.sample_fps is None:
            return True
        bucket = math.floor(ts * self.sample_fps + 1e-6)
        if state["bucket"] is not None and bucket <= state["bucket"]:
            return False
        state["bucket"] = bucket
        return True

    def _pace(self, ts: float, state) -> None:
        if self.realtime:
            delay = state["wall"] + ts - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _offer(self, item) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                self._counts["queued"] += 1
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # the oldest waiting frame goes: stay current
                    self._counts["dropped"] += 1
                except queue.Empty:
                    pass


def _to_rgb(frame) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 90:
        return image
    return np.ascontiguousarray(np.rot90(image, k=(rotation // 90) % 4)) if rotation else image
