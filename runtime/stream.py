"""Live streams: frames encoded as they arrive, questions about the window answered at any time.

    with rt.open_stream(window=32, policy="recent") as stream:
        stream.push(frame)                          # this frame's vision, pooling and slow K/V, now
        result = stream.ask("What is happening?")   # fast pooling + prefill + decode: no vision
        stream.frames_held()                        # [HeldFrame(index, timestamp_s, slot), ...]

What a push does (:meth:`StreamSession.push`): the frame is sampled (``sample_fps``: one frame
per 1 / fps seconds of stream time, the first of each interval), admitted to the window
(:mod:`slowfast_trt.runtime.stream_window`: which frames ``recent`` and ``uniform`` hold), and,
when the window keeps it, encoded at once into slot s of ring buffers allocated once for the
window's N frames: vision and projector (its N' frame tokens into ``tokens[s]``) and the slow
K/V of every hybrid layer (``keys[j][s]``, ``values[j][s]``: the projection is per token, so
the rows of a frame are exact whatever else the window holds). Nothing is computed again for a
frame already seen; a frame the window does not keep is not encoded.

What a question does (:meth:`StreamSession.ask`): the held frames' tokens and K/V rows are
gathered in frame order into contiguous buffers (also allocated once), the fast tokens are
pooled from them with the pooling of T = frames held (``fast_pool``), and the question is
prefilled and decoded as in a video session: the answer equals ``generate`` over exactly those
frames as a clip (tested, fp32 greedy, torch and ONNX Runtime). Follow-up questions reuse the
KV cache until a new frame changes the window; then the conversation so far is prefilled again
over the new window. A window holding one frame is answered as upstream answers one image
(324 unpooled tokens): that frame's vision features are kept while it is alone, and its
projector and slow K/V run at question time.

Threads: pushes and questions may come from different threads (a source-fed stream pushes
from its reader's encoder thread). Engine work holds ``RuntimeModel.lock``: a question takes it
for its prefill and for each decode step, a push for its encode, so frames are encoded between
the tokens of an answer. One question at a time per stream.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace

import torch

from slowfast_trt.detokenize import TextStream
from slowfast_trt.frames import as_frames
from slowfast_trt.prompt import DEFAULT_SYSTEM
from slowfast_trt.runtime.encoder import RuntimeModel, VideoState
from slowfast_trt.runtime.serialize import ClosedError
from slowfast_trt.runtime.session import RuntimeResult, VideoSession, sampling_params
from slowfast_trt.runtime.stream_window import FrameWindow, HeldFrame

__all__ = ["NoFramesError", "StreamClosedError", "StreamSession"]


class NoFramesError(ValueError):
    """A question before any frame reached the window."""


class StreamClosedError(ClosedError):
    """A push or question after :meth:`StreamSession.close` (a ``ValueError``)."""


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class _Rings:
    """Per-frame results of a window of ``size`` frames, and the gather buffers of a question."""

    def __init__(self, model: RuntimeModel, size: int):
        text, dev, dt = model.config.text, model.device, model.dtype
        per_frame = int(model.video_grid_pool().shape[0])
        heads, dim, hid = text.num_kv_heads, text.head_dim, text.hidden_size
        self.per_frame = per_frame
        self.tokens = torch.zeros((size, per_frame, hid), dtype=dt, device=dev)
        self.keys = [torch.zeros((size, heads, per_frame, dim), dtype=dt, device=dev) for _ in range(model.num_hybrid)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.window_tokens = torch.zeros_like(self.tokens)
        self.window_keys = [torch.zeros(k.numel(), dtype=dt, device=dev) for k in self.keys]
        self.window_values = [torch.zeros_like(k) for k in self.window_keys]

    def gather(self, slots: list[int]):
        """Tokens (T, n', hid) and per layer K, V (1, Hkv, T*n', D) of ``slots``, in that order."""
        count = len(slots)
        index = torch.tensor(slots, dtype=torch.long, device=self.tokens.device)
        tokens = torch.index_select(self.tokens, 0, index, out=self.window_tokens[:count])
        _, heads, per_frame, dim = self.keys[0].shape
        gathered = []
        for stores, outs in ((self.keys, self.window_keys), (self.values, self.window_values)):
            views = []
            for store, flat in zip(stores, outs):
                view = flat[: heads * count * per_frame * dim].view(heads, count, per_frame, dim)
                torch.index_select(store.permute(1, 0, 2, 3), 1, index, out=view)
                views.append(view.view(1, heads, count * per_frame, dim))
            gathered.append(views)
        return tokens, gathered[0], gathered[1]


class StreamSession:
    """A live window of frames and a conversation about it; see the module docstring.

    Obtain one from ``SlowFastRuntime.open_stream``. ``source`` (a
    :class:`slowfast_trt.live.LiveSource`) feeds it from a reader thread; otherwise call
    :meth:`push`.
    """

    def __init__(self, model: RuntimeModel, runner, kv, *, window: int, policy: str = "recent",
                 sample_fps: float | None = None, decode_mode: str = "upstream", system: str = DEFAULT_SYSTEM,
                 on_close=None, source=None):
        if sample_fps is not None and (isinstance(sample_fps, bool) or not isinstance(sample_fps, (int, float))
                                       or not math.isfinite(sample_fps) or sample_fps <= 0):
            raise ValueError(f"sample_fps must be a number > 0 or None, got {sample_fps!r}")
        self._model, self._runner, self._kv = model, runner, kv
        self._window = FrameWindow(window, policy)
        self.sample_fps = sample_fps
        self.decode_mode, self.system = decode_mode, system
        self._on_close = on_close
        self._rings = _Rings(model, window)
        self._lock = model.lock
        self._push_lock, self._ask_lock = threading.Lock(), threading.Lock()
        self._single_features: torch.Tensor | None = None  # vision features of a frame held alone
        self._version, self._asked = 0, -1  # window changes / the window the session's video is
        self._session: VideoSession | None = None
        self._t0 = time.monotonic()
        self._last_ts: float | None = None
        self._last_bucket: int | None = None
        self.counts = {"pushed": 0, "sampled_out": 0, "encoded": 0, "not_kept": 0, "evicted": 0}
        self.last_encode_ms: dict[str, float] = {}
        self._encode_sums: dict[str, float] = {}
        self._closed = False
        self._ended: str | None = None
        self._source = source
        self._thread = None
        if source is not None:
            self._thread = threading.Thread(target=self._consume, name="slowfast-stream-encoder", daemon=True)
            self._thread.start()

    # -- frames -----------------------------------------------------------------------------

    def push(self, frame, timestamp: float | None = None) -> bool:
        """Add one frame (any form of :mod:`slowfast_trt.frames`, (H, W, 3) or (1, H, W, 3)) at
        ``timestamp`` seconds of stream time (default: seconds since the stream opened).
        Returns True when the window keeps it (then it is encoded before this returns)."""
        self._check_open()
        if self._source is not None:
            raise ValueError(f"this stream reads its frames from {self._source.url}; push() is for streams "
                             "opened without source=")
        return self._push(frame, timestamp)

    def _push(self, frame, timestamp, arrived_at: float | None = None) -> bool:
        frame = as_frames(frame, single=True)  # a bad frame: one FrameError, the stream unchanged
        arrived = (time.monotonic() if arrived_at is None else arrived_at) - self._t0
        with self._push_lock:
            self._check_open()
            ts = self._timestamp(timestamp)
            self.counts["pushed"] += 1
            if not self._sampled(ts):
                self.counts["sampled_out"] += 1
                return False
            return self._admit(frame, ts, arrived)

    def _timestamp(self, timestamp) -> float:
        ts = time.monotonic() - self._t0 if timestamp is None else timestamp
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise ValueError(f"timestamp must be a finite number of seconds or None, got {timestamp!r}")
        if self._last_ts is not None and ts < self._last_ts:
            raise ValueError(f"timestamp {ts} s is before the previous frame's {self._last_ts} s (stream time "
                             "must not go backwards)")
        self._last_ts = float(ts)
        return float(ts)

    def _sampled(self, ts: float) -> bool:
        if self.sample_fps is None:
            return True
        bucket = math.floor(ts * self.sample_fps + 1e-6)  # one frame per 1 / fps seconds: the first in each
        if self._last_bucket is not None and bucket <= self._last_bucket:
            return False
        self._last_bucket = bucket
        return True

    def _admit(self, frame, ts: float, arrived: float) -> bool:
        admission = self._window.plan()
        timings: dict[str, float] = {}
        with self._lock:
            if not admission.keep:
                self._commit(admission, ts, arrived)
                self.counts["not_kept"] += 1
                return False
            slot, rings = admission.slot, self._rings
            try:
                features = self._model.encode_frame(frame, self._model.video_grid_pool(),
                                                    rings.tokens[slot:slot + 1], timings)
                start = time.perf_counter()
                self._model.slow_kv(rings.tokens[slot:slot + 1], [k[slot:slot + 1] for k in rings.keys],
                                    [v[slot:slot + 1] for v in rings.values])
                self._model.engines["slow_kv"].synchronize()
                timings["slow_kv_ms"] = _ms(start)
            except BaseException:
                self._commit(replace(admission, keep=False), ts, arrived)  # its evictions stand: their slot was written
                raise
            self._commit(admission, ts, arrived)
            self._single_features = features.clone() if len(self._window) == 1 else None
        self.counts["encoded"] += 1
        self.last_encode_ms = timings
        for key, value in timings.items():
            self._encode_sums[key] = self._encode_sums.get(key, 0.0) + value
        return True

    def _commit(self, admission, ts: float, arrived: float) -> None:
        self._window.admit(admission, ts, arrived)
        self.counts["evicted"] += len(admission.evict)
        if admission.keep or admission.evict:
            self._version += 1

    def frames_held(self) -> list[HeldFrame]:
        """The frames the window holds, in order (what the next question is about)."""
        with self._lock:
            return list(self._window.held)

    def wait_for_frames(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``count`` frames have been encoded (or the stream ended); True if they were."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.counts["encoded"] < count:
            if self._ended is not None or self._closed or (deadline is not None and time.monotonic() > deadline):
                return self.counts["encoded"] >= count
            time.sleep(0.005)
        return True

    # -- questions --------------------------------------------------------------------------

    def ask(self, question: str, **sampling) -> RuntimeResult:
        """Answer ``question`` about the frames held now (:meth:`VideoSession.ask` sampling
        arguments); the answer joins the conversation. ``NoFramesError`` before any frame."""
        params = sampling_params(**sampling)
        with self._ask_lock:
            tokens = self._begin(question, params)
            for _ in tokens:
                pass
            return self._session.last_result

    def ask_stream(self, question: str, **sampling) -> TextStream:
        """Like :meth:`ask`, but iterate the returned stream for text pieces as they decode."""
        params = sampling_params(**sampling)
        with self._ask_lock:
            tokens = self._begin(question, params)
        return TextStream(self._model.tokenizer, tokens, params.stop_strings, result=lambda: self._session.last_result)

    def reset(self) -> None:
        """Forget the conversation; the frames stay."""
        self._check_open()
        if self._session is not None:
            self._session.reset()

    def _begin(self, question: str, params):
        """Window -> video (when it changed), then the prefill; returns the locked decode steps."""
        self._check_open()
        with self._lock:
            start = time.perf_counter()
            window = self._refresh()
            window["window_ms"] = _ms(start)
            turn = self._session._begin(question, params)
        return self._steps(turn, window)

    def _steps(self, turn, window: dict):
        decode = self._session._decode(turn)
        while True:
            with self._lock:
                try:
                    token = next(decode)
                except StopIteration:
                    break
            yield token
        result = self._session.last_result
        if result is not None:
            timings = result.timings_ms
            timings["window_ms"] = window["window_ms"]
            timings["ask_ttft_ms"] = window["window_ms"] + timings.get("ttft_ms", 0.0)
            result.stream = {k: v for k, v in window.items() if k != "window_ms"}

    def _refresh(self) -> dict:
        """Make the session's video the window as it is now (gather + fast pooling when it changed)."""
        held = list(self._window.held)
        if not held:
            why = f"the stream ended ({self._ended}) before any frame" if self._ended else "no frame has arrived yet"
            raise NoFramesError(f"{why}: push a frame (or wait_for_frames()) before asking; a text-only question "
                                "goes to SlowFastRuntime.generate(video=None, ...)")
        if self._version != self._asked or self._session is None:
            state = self._window_video(held)
            if self._session is None:
                self._session = VideoSession(self._model, self._runner, state, self._kv, self.decode_mode, self.system,
                                             on_close=lambda kv: None)  # the stream gives the cache back
            else:
                self._session._replace_video(state)
            self._asked = self._version
        return self._describe(held)

    def _window_video(self, held: list[HeldFrame]) -> VideoState:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if len(held) == 1:
            pooling = self._model.pooling(1)
            tokens = self._model.project(self._single_features, pooling.grid_pool)
            slow = tokens.reshape(1, -1, tokens.shape[-1])
            keys, values = self._model.slow_kv(slow)
        else:
            tokens, keys, values = self._rings.gather([h.slot for h in held])
            slow = tokens.reshape(1, -1, tokens.shape[-1])
        fast = self._model.fast_tokens(tokens)
        self._model.engines["fast_pool"].synchronize()
        timings["fast_pool_ms"] = _ms(start)
        return VideoState(fast, slow, keys, values, len(held), timings)

    def _describe(self, held: list[HeldFrame]) -> dict:
        return {"frames_held": len(held), "first": held[0].to_json(), "last": held[-1].to_json(),
                "frames_seen": self._window.seen, "stream_time_s": self._last_ts, "policy": self._window.policy,
                "window": self._window.size, "ended": self._ended}

    # -- state ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ended(self) -> str | None:
        """None while frames may still come; else why the source stopped (the frames stay)."""
        return self._ended

    def stats(self) -> dict:
        """Counters, the mean and last per-frame encode ms, the window and the source's counters."""
        encoded = max(self.counts["encoded"], 1)
        out = {**self.counts, "window": self._window.size, "policy": self._window.policy,
               "frames_held": len(self._window), "interval": self._window.interval,
               "mean_encode_ms": {k: v / encoded for k, v in self._encode_sums.items()},
               "last_encode_ms": dict(self.last_encode_ms), "ended": self._ended}
        if self._source is not None:
            out["source"] = self._source.stats()
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError("this stream is closed; open a new one with SlowFastRuntime.open_stream")

    def _consume(self) -> None:
        """Encoder thread of a source-fed stream: frames from the reader's queue into the window."""
        source = self._source
        try:
            while not self._closed:
                item = source.get(timeout=0.05)
                if item is None:
                    if source.ended is not None:
                        self._ended = source.ended
                        return
                    continue
                frame, ts, arrived_at = item
                self._push(frame, ts, arrived_at)
        except StreamClosedError:
            return
        except Exception as exc:  # a frame that cannot be encoded ends the stream, loudly
            self._ended = f"encoding failed: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Stop the source, free the ring buffers and give the KV cache back; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._source is not None:
            self._source.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._lock:
            if self._session is not None:
                self._session.close()  # releases the window's video; the KV cache comes back below
            kv, self._kv = self._kv, None
            self._rings = None
            self._single_features = None
        if self._on_close is not None:
            self._on_close(kv)
        elif kv is not None:
            kv.release()

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
