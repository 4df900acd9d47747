"""``SlowFastRuntime``: ask questions about videos with TensorRT, ONNX Runtime or PyTorch.

Usage::

    from slowfast_trt import SlowFastRuntime

    rt = SlowFastRuntime.load("engines/")            # export folder: TensorRT, else ONNX Runtime
    result = rt.generate(video="clip.mp4", question="What happens?", max_new_tokens=64)
    print(result.text, result.token_ids, result.timings_ms)

    for piece in rt.stream(video="clip.mp4", question="Describe it."):
        print(piece, end="", flush=True)

    with rt.open_video("clip.mp4") as session:       # encode once, ask many times
        session.ask("What happens?")
        session.ask("And then?")                      # prefills only the new turn

    with rt.open_stream(window=32) as stream:         # a live window: frames pushed as they come
        stream.push(frame)                            # vision, pooling and slow K/V of this frame now
        stream.ask("What is happening now?")          # fast pooling + prefill only

``backend="torch"`` runs the checkpoint's own modules eagerly (the reference semantics,
token for token). Export folders come from ``python -m slowfast_trt.export``; one export
serves every frame count from 1 to its ``max_frames`` (a file is sampled at the export's
default count unless ``frames=`` says otherwise). ``video`` is a path, frames in memory (a
uint8 (T, H, W, 3) array, a torch tensor on CPU or CUDA, a DLPack array, PIL images; see
:mod:`slowfast_trt.frames`), or None for a text-only question.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any

import torch

from slowfast_trt.detokenize import TextStream
from slowfast_trt.prompt import DEFAULT_SYSTEM, Conversation
from slowfast_trt.runtime.decoder_runner import DecoderRunner
from slowfast_trt.frames import is_frame_input
from slowfast_trt.runtime.encoder import RuntimeModel, VideoState, check_frame_count, check_frames
from slowfast_trt.runtime.loading import check_count, engine_vision_batch, load_checkpoint, load_export
from slowfast_trt.runtime.arguments import check_device, check_threads
from slowfast_trt.runtime.serialize import CallGate
from slowfast_trt.runtime.session import RuntimeResult, VideoSession, sampling_params
from slowfast_trt.models.slowfast.sequence import check_decode_mode
from slowfast_trt.video import is_image_path, load_image, load_video

__all__ = ["BACKENDS", "SlowFastRuntime", "load_checkpoint", "load_export"]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
# Frames per vision call unless told otherwise: bounds the tower's activations (a 64-frame
# batch peaked at 3.4 GB in ONNX Runtime for a 1 MB tiny tower) and, measured on CPU (tiny
# tower, 16 frames, CPU time), is as fast as any batch: torch 542 ms at 4 against 513 at 2
# and 761 at 16; ONNX Runtime 745 at 4, 731 at 8, 1005 at 16.
DEFAULT_VISION_BATCH = 4


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class SlowFastRuntime:
    """A loaded model: engines, tokenizer and a spare KV cache.

    Safe to call from several threads: calls are serialized by one lock, never interleaved
    inside an engine (:mod:`slowfast_trt.runtime.serialize`); ``blocking=False`` raises
    ``RuntimeBusyError`` instead of waiting. After :meth:`close` every call, and every session
    or stream it opened, raises one ``ClosedError``.
    """

    def __init__(self, model: RuntimeModel, decode_mode: str = "upstream", default_frames: int | None = None,
                 source: str = "", decode_steps: str = "auto"):
        self._model = model
        self._runner = DecoderRunner(model, decode_steps)
        self.decode_mode = check_decode_mode(decode_mode)
        self.default_frames = default_frames or model.config.training_frames
        self.source = source
        self._spare_caches: list = []  # at most one KV cache kept for reuse
        self._gate = CallGate(model.lock, "this SlowFastRuntime is closed; load a new one with SlowFastRuntime.load")
        self._children = weakref.WeakSet()  # open sessions and streams, closed with the runtime

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str | os.PathLike, backend: str = "auto", device: str | torch.device | None = None, *,
             decode_mode: str = "upstream", dtype: str | None = None, frames: int | None = None,
             max_seq_len: int | None = None, threads: int | None = None,
             checkpoint: str | os.PathLike | None = None, vision_batch: int | None = None,
             decode_steps: str = "auto", **family_options) -> "SlowFastRuntime":
        """Load an export folder or a checkpoint.

        Args:
            source: export folder (``manifest.json`` inside) or checkpoint folder / Hub id.
            backend: ``auto`` (TensorRT when the folder has engines and TensorRT and CUDA are
                present, else ONNX Runtime; a checkpoint means ``torch``), ``tensorrt``,
                ``onnxruntime`` or ``torch``.
            device: ``cpu``, ``cuda``, ``cuda:N``; default CUDA when the backend can use it.
            decode_mode: ``upstream`` (generated tokens do not cross-attend, as upstream
                generates) or ``attend`` (they attend to the cached slow K/V).
            dtype, frames, max_seq_len: the weight dtype (default float32), the frames
                sampled from a video file (default: the checkpoint's training frames, or the
                export's default count) and the KV-cache length (default min(8192,
                max_position_embeddings)); an export fixes dtype and max_seq_len (a different
                value is an error) and serves 1..its max_frames frames.
            threads: ONNX Runtime intra-op threads (default: its own choice).
            checkpoint: export folders only: also check that the folder was exported from
                this checkpoint (its fingerprint is in the manifest).
            vision_batch: run the vision tower on this many frames at a time (bounds its
                activation memory); default ``DEFAULT_VISION_BATCH``, or a TensorRT vision
                engine's largest batch.
            decode_steps: how one-token steps run (:mod:`slowfast_trt.runtime.decode_graph`):
                ``auto`` (``cuda-graph`` for TensorRT and torch on CUDA, else ``dynamic``),
                ``dynamic`` (the past is the cache's valid rows), ``static`` (the whole cache
                with a length mask, eager) or ``cuda-graph`` (static, captured once per video
                and replayed).

        The source's model family (the manifest's ``family``, or the checkpoint's ``model_type``;
        :mod:`slowfast_trt.runtime.families`) picks the runtime: a LongVU source is loaded by
        ``LongVURuntime.load`` with the same arguments and ``family_options`` (its towers'
        folders, ``siglip=`` and ``dino=``); Slow-Fast takes none.
        """
        from slowfast_trt.runtime.families import runtime_for

        other = runtime_for(source)
        if other is not None and other is not cls:
            return other.load(source, backend=backend, device=device, decode_mode=decode_mode, dtype=dtype,
                              frames=frames, max_seq_len=max_seq_len, threads=threads, checkpoint=checkpoint,
                              vision_batch=vision_batch, decode_steps=decode_steps, **family_options)
        if family_options:
            raise ValueError(f"{source}: options {', '.join(sorted(family_options))} do not apply to a Slow-Fast model")
        if vision_batch is not None and (isinstance(vision_batch, bool) or not isinstance(vision_batch, int) or vision_batch < 1):
            raise ValueError(f"vision_batch must be a positive integer or None, got {vision_batch!r}")
        device = check_device(device)
        check_threads(threads)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        path = Path(source)
        # A folder with ONNX graphs but no manifest is a broken export, not a checkpoint.
        looks_exported = path.is_dir() and ((path / "manifest.json").is_file() or any(path.glob("*.onnx")))
        if looks_exported or backend in ("tensorrt", "onnxruntime"):
            model, export_frames = load_export(path, backend, device, threads, checkpoint)
            fixed = {"dtype": str(model.dtype).replace("torch.", ""), "max_seq_len": model.max_seq_len}
            for name, value in (("dtype", dtype), ("max_seq_len", max_seq_len)):
                if value is not None and value != fixed[name]:
                    raise ValueError(f"{name}={value!r}, but the export folder {path} was built with {name} {fixed[name]}")
            if frames is not None:
                check_count(frames)
                check_frame_count(frames, model.max_frames, f"the engines in {path}")
            model.vision_batch = vision_batch or engine_vision_batch(path, model) or DEFAULT_VISION_BATCH
            return cls(model, decode_mode, default_frames=frames or export_frames, source=str(path),
                       decode_steps=decode_steps)
        model, default_frames = load_checkpoint(source, backend, device, dtype or "float32", max_seq_len)
        model.vision_batch = vision_batch or DEFAULT_VISION_BATCH
        return cls(model, decode_mode, default_frames=frames or default_frames, source=str(source),
                   decode_steps=decode_steps)

    # -- properties -------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._model.backend

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def frames(self) -> int | None:
        """None: every frame count works, 1..:attr:`max_frames` (kept for callers that asked
        for an export's fixed count; exports had one before manifest format 3)."""
        return None

    @property
    def max_frames(self) -> int | None:
        """The most frames per video the engines serve (None: any, torch backend)."""
        return self._model.max_frames

    @property
    def max_seq_len(self) -> int:
        return self._model.max_seq_len

    @property
    def tokenizer(self):
        return self._model.tokenizer

    @property
    def config(self):
        return self._model.config

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "device": str(self.device), "dtype": str(self._model.dtype).replace("torch.", ""),
            "frames": self.frames, "default_frames": self.default_frames, "max_frames": self.max_frames,
            "max_seq_len": self.max_seq_len,
            "decode_mode": self.decode_mode, "decode_steps": self._runner.decode_steps, "source": self.source,
        }

    # -- questions --------------------------------------------------------------------------

    def generate(self, video=None, question: str | None = None, *, frames: int | None = None,
                 system: str = DEFAULT_SYSTEM, decode_mode: str | None = None, blocking: bool = True,
                 **sampling) -> RuntimeResult:
        """Answer one question about ``video`` (path, uint8 (T, H, W, 3) array, ``VideoFrames``,
        or None for a text-only prompt). ``sampling``: ``SamplingParams`` fields."""
        params = self._check_question(question, sampling)
        self._gate.probe(blocking)
        with self.open_video(video, frames=frames, system=system, decode_mode=decode_mode, blocking=blocking) as session:
            with self._gate.call(blocking):
                return session._ask(question, params)

    def stream(self, video=None, question: str | None = None, *, frames: int | None = None,
               system: str = DEFAULT_SYSTEM, decode_mode: str | None = None, blocking: bool = True,
               **sampling) -> TextStream:
        """Like :meth:`generate`, but iterate the result for text pieces; ``.result`` at the end."""
        params = self._check_question(question, sampling)
        session = self.open_video(video, frames=frames, system=system, decode_mode=decode_mode, blocking=blocking)
        try:
            return session._stream(question, params, on_done=session.close)
        except BaseException:
            session.close()
            raise

    def encode_video(self, video, *, frames: int | None = None, sampling: str = "uniform", fps: float | None = None,
                     start_s: float | None = None, end_s: float | None = None, blocking: bool = True) -> VideoState:
        """Decode and encode a video once (fast tokens, slow K/V) for any number of sessions.

        ``video``: a path (decoded with :func:`slowfast_trt.video.load_video`, ``sampling``,
        ``fps``, ``start_s``, ``end_s`` as there, ``frames`` frames, default
        :attr:`default_frames`), or frames in memory (:mod:`slowfast_trt.frames`: a uint8
        (T, H, W, 3) array, a torch tensor on CPU or CUDA, a DLPack array, PIL images,
        ``VideoFrames``), 1..:attr:`max_frames` of them.
        """
        timings: dict[str, float] = {}
        self._gate.probe(blocking)  # closed or busy: say so before decoding the file
        array = self._frames_of(video, frames, timings, sampling=sampling, fps=fps, start_s=start_s, end_s=end_s)
        with self._gate.call(blocking), torch.no_grad():
            return self._model.encode_frames(array, timings)

    def open_video(self, video=None, *, frames: int | None = None, system: str = DEFAULT_SYSTEM,
                   decode_mode: str | None = None, blocking: bool = True, **video_options) -> VideoSession:
        """A conversation about ``video``: anything :meth:`encode_video` takes (encoded here,
        freed when the session closes), a ``VideoState`` it returned (shared, not freed), or
        None for a text-only chat."""
        mode = check_decode_mode(decode_mode or self.decode_mode)
        Conversation(system=system)  # validate before any work
        self._gate.probe(blocking)
        owned = not isinstance(video, VideoState)
        state = video
        if video is not None and owned:
            state = self.encode_video(video, frames=frames, blocking=blocking, **video_options)
        elif not owned and state.released:
            raise ValueError("this encoded video was released (its session closed); encode it again")
        with self._gate.call(blocking):
            kv = self._acquire_cache()
            session = VideoSession(self._model, self._runner, state, kv, mode, system, on_close=self._return_cache,
                                   owns_video=owned)
            self._children.add(session)
        return session

    def open_stream(self, window: int | None = None, policy: str = "recent", sample_fps: float | None = None, *,
                    source=None, realtime: bool | None = None, queue_size: int = 8, open_timeout_s: float = 10.0,
                    system: str = DEFAULT_SYSTEM, decode_mode: str | None = None):
        """A live window of at most ``window`` frames (default :attr:`default_frames`) to push
        frames into and ask about at any time (:class:`slowfast_trt.runtime.stream.StreamSession`).

        ``policy``: ``recent`` (the last N frames) or ``uniform`` (at most N frames evenly
        spread over everything seen, by decimation; :mod:`slowfast_trt.runtime.stream_window`).
        ``sample_fps``: keep one frame per 1 / fps seconds of stream time (default: every frame).
        ``source``: a file, an RTSP/RTMP/HTTP/UDP URL or a V4L2 device (``/dev/video0``) read by
        PyAV on a reader thread (:class:`slowfast_trt.live.LiveSource`: a bounded queue of
        ``queue_size`` frames, the oldest dropped and counted when encoding falls behind; a file
        is paced by its timestamps unless ``realtime=False``); it cannot be opened: one error.
        """
        from slowfast_trt.runtime.stream import StreamSession

        self._gate.check_open()
        mode = check_decode_mode(decode_mode or self.decode_mode)
        Conversation(system=system)  # validate before any work
        size = window if window is not None else min(self.default_frames, self.max_frames or self.default_frames)
        if self.max_frames is not None and isinstance(size, int) and not isinstance(size, bool) and size > self.max_frames:
            raise ValueError(f"window={size}, but the engines in {self.source} serve 1..{self.max_frames} frames; "
                             f"re-export with --max-frames {size}")
        live = None
        if source is not None:
            from slowfast_trt.live import LiveSource

            live = LiveSource(source, sample_fps=sample_fps, realtime=realtime, queue_size=queue_size,
                              open_timeout_s=open_timeout_s)
        kv = self._acquire_cache()
        try:
            stream = StreamSession(self._model, self._runner, kv, window=size, policy=policy, sample_fps=sample_fps,
                                   decode_mode=mode, system=system, on_close=self._return_cache, source=live)
            self._children.add(stream)
            return stream
        except BaseException:
            self._return_cache(kv)
            if live is not None:
                live.close()
            raise

    def close(self) -> None:
        """Close every session and stream still open, free the spare KV cache and the engines;
        waits for a call in progress; idempotent."""
        if not self._gate.close():
            return
        for child in list(self._children):  # outside the lock: a stream joins its encoder thread
            child.close()
        with self._gate.lock:
            for kv in self._spare_caches:
                kv.release()
            self._spare_caches = []
            self._runner.close()
            for engine in self._model.engines.values():
                engine.close()

    def __enter__(self) -> "SlowFastRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _check_question(question, sampling):
        if question is None:
            raise ValueError("a question is required (question=...)")
        Conversation().add_question(question)
        return sampling_params(**sampling)

    def _frame_count(self, frames: int | None) -> int:
        if frames is not None:
            check_count(frames)
        count = frames or min(self.default_frames, self._model.max_frames or self.default_frames)
        check_frame_count(count, self._model.max_frames, f"the engines in {self.source}")
        self._check_budget(count)
        return count

    def _check_budget(self, count: int) -> None:
        """Frame counts that cannot run are refused before any decoding: fast tokens that alone
        overflow the KV cache, and (torch on CPU in float16/bfloat16) the ``avg_pool3d`` branch
        of the fast-token pooling, which PyTorch's CPU kernels lack in half precision."""
        from slowfast_trt.models.slowfast.specs import fast_token_count
        from slowfast_trt.models.slowfast.visual_tokens import uses_avg_pool3d

        fast = fast_token_count(self._model.config, count)
        if fast + 1 > self.max_seq_len:  # + at least one text token
            raise ValueError(f"frames={count} gives {fast} fast tokens, more than the KV cache holds "
                             f"(max_seq_len {self.max_seq_len}); use fewer frames or a larger max_seq_len")
        half = self._model.dtype in (torch.float16, torch.bfloat16)
        if (self.backend == "torch" and self.device.type == "cpu" and half and count > 1
                and uses_avg_pool3d(count, self._model.config.visual)):
            dtype = str(self._model.dtype).replace("torch.", "")
            raise ValueError(f"dtype {dtype} on cpu: {count} frames take the avg_pool3d fast-token pooling, which "
                             f"PyTorch has no {dtype} CPU kernel for; use dtype float32 on cpu, or a CUDA device")

    def _frames_of(self, video, frames: int | None, timings: dict, **video_kwargs):
        if is_frame_input(video):
            count = check_frames(video, self._model.max_frames)
            if frames is not None and count != frames:
                raise ValueError(f"frames={frames}, but the frame array holds {count} frames")
            self._check_budget(count)
            return video
        if not isinstance(video, (str, os.PathLike)):
            raise ValueError("video must be a path, frames in memory (a uint8 (T, H, W, 3) array or tensor, a DLPack "
                             f"array, PIL images, VideoFrames) or None, got {type(video).__name__}")
        count = self._frame_count(frames)
        start = time.perf_counter()
        if is_image_path(video):
            clip = load_image(video)
        else:
            clip = load_video(video, count, **video_kwargs)
        timings["video_decode_ms"] = _ms(start)
        return clip.frames

    def _acquire_cache(self):
        from slowfast_trt.runtime.kv_cache import KVCache

        if self._spare_caches:
            kv = self._spare_caches.pop()
            kv.reset()
            return kv
        return KVCache(self._model.kv_spec())

    def _return_cache(self, kv) -> None:
        if kv.released:
            return
        if self._spare_caches or self._gate.closed:
            kv.release()  # keep one spare: a one-shot generate() allocates nothing after the first
        else:
            kv.reset()
            self._spare_caches.append(kv)

    def __repr__(self) -> str:
        return f"SlowFastRuntime({', '.join(f'{k}={v!r}' for k, v in self.info().items())})"
