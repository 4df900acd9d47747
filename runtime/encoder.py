"""The vision side of the runtime: frames -> fast tokens and slow K/V, for a clip or a frame at a time.

Stages (engines of :mod:`slowfast_trt.models.slowfast.specs`), for a clip of T frames::

    uint8 frames (T, H, W, 3) --resize + center crop--> (T, S, S, 3)
      --vision--> features (T, g*g, C) --projector (grid_pool of T)--> frame tokens (T, n', hid)
      --fast_pool (temporal_pool, spatial_pool of T)--> fast tokens (F*n'', hid)
      frame tokens as (1, T*n', hid) --slow_kv--> K/V of every hybrid layer (1, Hkv, T*n', D)

The frame count is data (the pooling matrices, built once per T and kept on the device), so one
set of engines serves every T from 1 to ``max_frames``. A stream
(:mod:`slowfast_trt.runtime.stream`) runs the same stages one frame at a time
(:meth:`RuntimeModel.encode_frame`) and the fast pooling at question time
(:meth:`RuntimeModel.fast_tokens`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from slowfast_trt.frames import FrameError, crop_frames, frame_count
from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.specs import VISION_STRIDE
from slowfast_trt.models.slowfast.visual_tokens import PoolingMatrices, pooling_matrices, video_grid_pool
from slowfast_trt.prompt import PromptTokens
from slowfast_trt.models.slowfast.sequence import SequenceLayout
from slowfast_trt.runtime.engine import Engine
from slowfast_trt.runtime.kv_cache import KVCacheSpec, slow_kv_names

__all__ = ["RuntimeModel", "VideoState", "check_frame_count", "check_frames"]

_POOLING_CACHE = 8  # pooling matrices kept per model (one set per frame count)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class VideoState:
    """An encoded video: fast tokens for the prompt and the slow K/V of every hybrid layer."""

    def __init__(self, fast, slow, slow_keys, slow_values, frames: int, timings_ms: dict[str, float]):
        self.fast = fast  # (Nf, hidden)
        self.slow = slow  # (1, Ns, hidden), kept for the benchmark's recompute baseline
        self.slow_keys = list(slow_keys)  # per hybrid layer (1, Hkv, Ns, D)
        self.slow_values = list(slow_values)
        self.slow_lengths = torch.full((1,), int(slow.shape[1]), dtype=torch.int32, device=slow.device)
        self.frames = frames
        self.timings_ms = timings_ms

    @property
    def num_fast(self) -> int:
        return int(self.fast.shape[0])

    @property
    def num_slow(self) -> int:
        return int(self.slow.shape[1])

    def recompute_slow_kv(self, model: "RuntimeModel") -> None:
        """Run the slow K/V projection again into the same buffers (what upstream does per step)."""
        model.slow_kv(self.slow, self.slow_keys, self.slow_values)

    @property
    def released(self) -> bool:
        return self.fast is None

    def release(self) -> None:
        self.fast = self.slow = None
        self.slow_keys, self.slow_values = [], []


@dataclass
class RuntimeModel:
    """What generation needs besides per-conversation state: engines, embeddings, sizes.

    ``embed_table`` (vocab_rows, hidden) may stay on the host (the exported table is a
    memory-mapped file): rows are gathered where it lives and moved to ``device``.
    ``max_frames``: the most frames per video the engines serve (None: any, torch backend).
    """

    engines: dict[str, Engine]
    config: SlowFastConfig
    tokenizer: object
    embed_table: torch.Tensor
    max_seq_len: int
    max_frames: int | None
    backend: str
    device: torch.device
    dtype: torch.dtype
    vision_batch: int | None = None  # frames per vision call (bounds activation memory); None: all

    def __post_init__(self):
        # Held while engines run for a stream (its encoder thread and its questions), so the two
        # never drive one engine at once.
        self.lock = threading.RLock()
        self._pooling: dict[int, PoolingMatrices] = {}
        self._video_grid: torch.Tensor | None = None

    # -- sizes --------------------------------------------------------------------------------

    @property
    def grid_tokens(self) -> int:
        side = self.config.visual.image_size // VISION_STRIDE
        return side * side

    @property
    def num_hybrid(self) -> int:
        return len(self.config.cross_attn.hybrid_layers)

    def synchronize(self) -> None:
        self.engines["decoder"].synchronize()

    def kv_spec(self, max_len: int | None = None) -> KVCacheSpec:
        text = self.config.text
        return KVCacheSpec(text.num_layers, text.num_kv_heads, text.head_dim, max_len or self.max_seq_len,
                           self.dtype, self.device)

    def pooling(self, frames: int) -> PoolingMatrices:
        """The pooling matrices of a ``frames``-frame video, on the device (cached per count)."""
        found = self._pooling.pop(frames, None)
        if found is None:
            found = pooling_matrices(frames, self.config.visual, self.grid_tokens).to(self.device)
        self._pooling[frames] = found  # most recent last
        while len(self._pooling) > _POOLING_CACHE:
            self._pooling.pop(next(iter(self._pooling)))
        return found

    def video_grid_pool(self) -> torch.Tensor:
        """``grid_pool`` of a video frame (what every streamed frame is pooled with)."""
        if self._video_grid is None:
            self._video_grid = video_grid_pool(self.config.visual, self.grid_tokens).to(self.device)
        return self._video_grid

    # -- prompt rows --------------------------------------------------------------------------

    def embed_ids(self, ids) -> torch.Tensor:
        table = self.embed_table
        rows = table.index_select(0, torch.as_tensor(ids, dtype=torch.long, device=table.device))
        return rows.to(device=self.device, dtype=self.dtype)

    def embed_rows(self, prompt: PromptTokens, layout: SequenceLayout, video: VideoState | None, start: int):
        """(1, L, hidden) embeddings of the prompt rows ``start ..`` (text ids and fast tokens merged)."""
        pieces = []
        before = prompt.text_ids_before
        if start < len(before):
            pieces.append(self.embed_ids(before[start:]))
        if prompt.video_index is not None:
            if video is None:
                raise ValueError("prompt has a video placeholder but no video was encoded")
            video_end = layout.before + layout.num_fast
            if start < video_end:
                pieces.append(video.fast[max(0, start - layout.before):].to(self.dtype))
            after = prompt.text_ids_after[max(0, start - video_end):]
            if after:
                pieces.append(self.embed_ids(after))
        return torch.cat(pieces)[None]

    # -- stages -------------------------------------------------------------------------------

    def crop(self, frames) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames (numpy or torch, any size) -> (T, S, S, 3) on the device."""
        return crop_frames(frames, self.config.visual.image_size, self.device)

    def vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower over all frames, or over chunks of ``vision_batch`` frames written
        into one features tensor (frames are independent; chunks bound the activations)."""
        return self._by_frames("vision", "frames", pixels, {}, "features")

    def project(self, features: torch.Tensor, grid_pool: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Features (N, g*g, C) -> frame tokens (N, n', hidden), into ``out`` when given; in
        ``vision_batch`` chunks too (7B widths, 64 frames in one call: ~300 MB per activation)."""
        return self._by_frames("projector", "features", features, {"grid_pool": grid_pool}, "frame_tokens", out)

    def _by_frames(self, name: str, frames_input: str, frames: torch.Tensor, fixed: dict, output: str,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """Run engine ``name`` over ``frames`` (first axis: frames, each independent of the
        others) in chunks of ``vision_batch``, every chunk written into one output tensor."""
        engine, batch, total = self.engines[name], self.vision_batch, int(frames.shape[0])
        if not batch or batch >= total:
            outputs = {output: out} if out is not None else None
            return engine.run({frames_input: frames, **fixed}, outputs)[output]
        start = 0
        if out is None:
            first = engine.run({frames_input: frames[:batch], **fixed})[output]
            out = torch.empty((total, *first.shape[1:]), dtype=first.dtype, device=first.device)
            out[:batch].copy_(first)
            start = batch
        for start in range(start, total, batch):
            chunk = frames[start:start + batch]
            engine.run({frames_input: chunk, **fixed}, outputs={output: out[start:start + len(chunk)]})
        return out

    def fast_tokens(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """Frame tokens (T, n', hidden) -> fast tokens (F*n'', hidden) with the pooling of T."""
        pooling = self.pooling(int(frame_tokens.shape[0]))
        feeds = {"frame_tokens": frame_tokens, "temporal_pool": pooling.temporal_pool, "spatial_pool": pooling.spatial_pool}
        fast = self.engines["fast_pool"].run(feeds)["fast_tokens"]
        return fast.reshape(-1, fast.shape[-1])

    def slow_kv(self, slow: torch.Tensor, keys=None, values=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Slow tokens (1, Ns, hidden) -> per hybrid layer K, V (1, Hkv, Ns, D), into the given
        buffers when ``keys``/``values`` are passed."""
        names = slow_kv_names(self.num_hybrid)
        outputs = None
        if keys is not None:
            outputs = {}
            for (k_name, v_name), k, v in zip(names, keys, values):
                outputs[k_name], outputs[v_name] = k, v
        out = self.engines["slow_kv"].run({"slow_tokens": slow}, outputs=outputs)
        return [out[k] for k, _ in names], [out[v] for _, v in names]

    def encode_frames(self, frames, timings: dict[str, float]) -> VideoState:
        """uint8 (T, H, W, 3) frames (numpy, or torch on any device) -> :class:`VideoState`."""
        count = check_frames(frames, self.max_frames)
        start = time.perf_counter()
        pixels = self.crop(frames)
        timings["preprocess_ms"] = _ms(start)
        pooling = self.pooling(count)
        stages = {}
        for stage, run in (("vision", lambda: self.vision(pixels)),
                           ("projector", lambda: self.project(stages["vision"], pooling.grid_pool)),
                           ("fast_pool", lambda: self.fast_tokens(stages["projector"])),
                           ("slow_kv", lambda: self.slow_kv(_flat(stages["projector"])))):
            start = time.perf_counter()
            stages[stage] = run()
            self.engines[stage].synchronize()
            timings[f"{stage}_ms"] = _ms(start)
        timings["pooler_ms"] = timings["projector_ms"] + timings["fast_pool_ms"]
        keys, values = stages["slow_kv"]
        return VideoState(stages["fast_pool"], _flat(stages["projector"]), keys, values, count, timings)

    def encode_frame(self, frame, grid_pool: torch.Tensor, tokens_out: torch.Tensor, timings: dict[str, float]):
        """One uint8 (H, W, 3) or (1, H, W, 3) frame -> its frame tokens, written into
        ``tokens_out`` (1, n', hidden); returns its vision features too (1, g*g, C)."""
        start = time.perf_counter()
        pixels = self.crop(frame if frame.ndim == 4 else frame[None])
        timings["preprocess_ms"] = _ms(start)
        start = time.perf_counter()
        features = self.vision(pixels)
        self.engines["vision"].synchronize()
        timings["vision_ms"] = _ms(start)
        start = time.perf_counter()
        self.project(features, grid_pool, out=tokens_out)
        self.engines["projector"].synchronize()
        timings["projector_ms"] = _ms(start)
        return features


def _flat(frame_tokens: torch.Tensor) -> torch.Tensor:
    """Frame tokens (T, n', hidden) -> slow tokens (1, T*n', hidden) (a view)."""
    return frame_tokens.reshape(1, -1, frame_tokens.shape[-1])


def check_frame_count(count: int, max_frames: int | None, source: str = "the engines") -> None:
    """``ValueError`` unless 1 <= count <= max_frames (None: any count)."""
    if max_frames is not None and count > max_frames:
        raise ValueError(
            f"video has {count} frames but {source} serve 1..{max_frames} frames; sample at most {max_frames} "
            f"(frames=N), or re-export with --max-frames {count}"
        )


def check_frames(frames, max_frames: int | None) -> int:
    """A frame batch must be uint8 (T, H, W, 3) with 1 <= T <= max_frames; returns T."""
    try:
        count = frame_count(frames)
    except FrameError as exc:
        raise ValueError(f"video frames: {exc}") from None
    check_frame_count(count, max_frames)
    return count
