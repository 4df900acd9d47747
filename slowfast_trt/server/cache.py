"""What the server keeps between requests: encoded videos and open conversations.

``VideoCache``: ``VideoState`` objects from ``SlowFastRuntime.encode_video`` (fast tokens and
the slow K/V of every hybrid layer), keyed by the content's SHA-256 and the frame selection,
in an LRU bounded in bytes (estimated from the tensors' sizes). A hit skips decoding, the
vision tower, the pooler and the slow K/V projection.

``SessionCache``: ``VideoSession`` objects keyed by (video key, system text, the turns so
far); a request whose messages extend a cached conversation takes that session and
prefills only its new turn. Bounded by count: each session owns a KV cache allocated at
the model's maximum length.

Both are used from the model's thread only; evicting a video closes the sessions that
read it first, then frees it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable

__all__ = ["SessionCache", "VideoCache", "VideoKey", "state_bytes"]


@dataclass(frozen=True)
class VideoKey:
    """Content hash + frame selection: two requests with equal keys get equal encodings."""

    sha256: str
    kind: str
    frames: int | None
    sampling: str = "uniform"
    fps: float | None = None
    start: float | None = None
    end: float | None = None


def state_bytes(state: Any) -> int:
    """Bytes of the tensors an encoded video holds (fast, slow tokens, slow keys and values; a
    family's own state, e.g. LongVU's cached tower features, says with ``nbytes``)."""
    if isinstance(getattr(state, "nbytes", None), int):
        return state.nbytes
    tensors = [getattr(state, "fast", None), getattr(state, "slow", None)]
    tensors += list(getattr(state, "slow_keys", []) or []) + list(getattr(state, "slow_values", []) or [])
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors if t is not None)


class _VideoEntry:
    def __init__(self, state, nbytes: int):
        self.state, self.nbytes, self.pins = state, nbytes, 0


class VideoCache:
    """LRU of encoded videos bounded by ``max_bytes``; ``on_evict(key)`` runs before a state is freed."""

    def __init__(self, max_bytes: int, on_evict: Callable[[VideoKey], None] = lambda key: None):
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[VideoKey, _VideoEntry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: VideoKey) -> bool:
        return key in self._items

    def get(self, key: VideoKey):
        entry = self._items.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return entry.state

    def put(self, key: VideoKey, state) -> bool:
        """Keep ``state``; False (not kept) when it alone is over the budget."""
        nbytes = state_bytes(state)
        if nbytes > self.max_bytes:
            return False
        if key in self._items:
            self._drop(key)
        self._items[key] = _VideoEntry(state, nbytes)
        self.bytes += nbytes
        self._shrink(keep=key)  # the caller is about to use the new one
        return True

    def pin(self, key: VideoKey) -> None:
        """Keep ``key`` through evictions until :meth:`unpin` (the request using it is running)."""
        if key in self._items:
            self._items[key].pins += 1

    def unpin(self, key: VideoKey) -> None:
        if key in self._items:
            self._items[key].pins -= 1
            self._shrink()

    def clear(self) -> None:
        for key in list(self._items):
            self._drop(key)

    def _shrink(self, keep: VideoKey | None = None) -> None:
        for key in list(self._items):
            if self.bytes <= self.max_bytes:
                break
            if self._items[key].pins <= 0 and key != keep:
                self._drop(key)

    def _drop(self, key: VideoKey) -> None:
        self._on_evict(key)
        entry = self._items.pop(key)
        self.bytes -= entry.nbytes
        entry.state.release()


class SessionCache:
    """LRU of conversations, at most ``max_sessions``; evicted sessions are closed."""

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._video_of: dict[Hashable, VideoKey | None] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def take(self, key: Hashable):
        """Remove and return the session cached under ``key`` (None when there is none)."""
        session = self._items.pop(key, None)
        self._video_of.pop(key, None)
        if session is None:
            self.misses += 1
        else:
            self.hits += 1
        return session

    def put(self, key: Hashable, video: VideoKey | None, session) -> None:
        old = self._items.pop(key, None)
        if old is not None and old is not session:
            old.close()
        self._items[key] = session
        self._video_of[key] = video
        while len(self._items) > self.max_sessions:
            oldest, evicted = self._items.popitem(last=False)
            self._video_of.pop(oldest, None)
            evicted.close()

    def drop_video(self, video: VideoKey) -> None:
        """Close every session that reads ``video`` (it is about to be freed)."""
        for key in [k for k, v in self._video_of.items() if v == video]:
            self._video_of.pop(key)
            self._items.pop(key).close()

    def clear(self) -> None:
        for session in self._items.values():
            session.close()
        self._items.clear()
        self._video_of.clear()
