"""The KV cache of one conversation: explicit buffers allocated once at the maximum length.

Layout (``slowfast_trt.export.qwen2.KV_CACHE_LAYOUT``), per decoder layer ``i``::

    keys[i], values[i]: (batch, max_len, kv_heads, head_dim)

Rows ``0 .. length-1`` are valid. A decoder step with ``L`` new rows reads the past as the
views ``[:, :length]`` (contiguous for batch 1, so an engine binds them by pointer) and
writes its new rows into the views ``[:, length:length+L]`` (:meth:`KVCache.slots`);
:meth:`KVCache.commit` then advances ``length``. Nothing is allocated per step. A
conversation that would not fit is a ``ValueError`` with the numbers, never a truncation.
:meth:`KVCache.rollback` shortens the valid prefix (follow-up questions re-prefill the
rows whose cached values differ from a from-scratch prefill).

:class:`DecoderRunner` is the one place that runs the decoder over a cache: past views in,
new rows written into the slots, then committed; with its few per-step buffers (token,
embedding, position, logits) allocated once, a decode step allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .decode_graph import StaticStepCache, resolve_decode_steps

__all__ = ["DecoderRunner", "KVCache", "KVCacheSpec", "slow_kv_names"]


@dataclass(frozen=True)
class KVCacheSpec:
    """Sizes of a KV cache: one K and one V buffer per layer."""

    num_layers: int
    kv_heads: int
    head_dim: int
    max_len: int
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    batch: int = 1

    def __post_init__(self):
        for name in ("num_layers", "kv_heads", "head_dim", "max_len", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KVCacheSpec.{name} must be a positive integer, got {value!r}")

    @property
    def buffer_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.max_len, self.kv_heads, self.head_dim)

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers together."""
        b, s, h, d = self.buffer_shape
        return 2 * self.num_layers * b * s * h * d * torch.empty(0, dtype=self.dtype).element_size()


class KVCache:
    """Per-layer K/V buffers at the maximum length, a valid length, and slots for new rows."""

    def __init__(self, spec: KVCacheSpec):
        self.spec = spec
        shape = spec.buffer_shape
        # Zero-filled, not empty: rows past `length` are never read, but a zeroed buffer makes
        # a bug that reads them deterministic instead of reading stale or uninitialised memory.
        self.keys = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self.values = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self._length = 0

    @property
    def length(self) -> int:
        """Valid rows."""
        return self._length

    @property
    def max_len(self) -> int:
        return self.spec.max_len

    @property
    def free(self) -> int:
        return self.spec.max_len - self._length

    @property
    def released(self) -> bool:
        return self.keys is None

    def check_fits(self, rows: int, what: str = "the new rows") -> None:
        """``ValueError`` naming the numbers when ``rows`` more rows would exceed ``max_len``."""
        self._check_live()
        if rows < 0:
            raise ValueError(f"KV cache: cannot add a negative number of rows ({rows})")
        if self._length + rows > self.spec.max_len:
            raise ValueError(
                f"KV cache: {self._length} cached rows + {rows} rows for {what} = {self._length + rows} "
                f"exceeds the maximum sequence length {self.spec.max_len}"
            )

    def past(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Views ``[:, :length]`` of every layer's K and V (contiguous for batch 1)."""
        self._check_live()
        n = self._length
        return [k[:, :n] for k in self.keys], [v[:, :n] for v in self.values]

    def slots(self, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Views ``[:, length:length+rows]`` where an engine writes the new rows; checks the limit."""
        self.check_fits(rows)
        a, b = self._length, self._length + rows
        return [k[:, a:b] for k in self.keys], [v[:, a:b] for v in self.values]

    def commit(self, rows: int) -> None:
        """Mark ``rows`` rows written into :meth:`slots` as valid."""
        self.check_fits(rows)
        self._length += rows

    def append(self, new_keys, new_values) -> None:
        """Copy new rows (each (batch, L, kv_heads, head_dim)) to ``[length:length+L]`` and commit."""
        rows = int(new_keys[0].shape[1])
        key_slots, value_slots = self.slots(rows)
        if len(new_keys) != len(key_slots) or len(new_values) != len(value_slots):
            raise ValueError(f"KV cache: got {len(new_keys)} layers of new rows, the cache has {len(key_slots)}")
        for slot, new in zip(key_slots + value_slots, list(new_keys) + list(new_values)):
            slot.copy_(new)
        self._length += rows

    def rollback(self, length: int) -> None:
        """Keep only the first ``length`` rows (``0 <= length <= self.length``)."""
        self._check_live()
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self._length:
            raise ValueError(f"KV cache: cannot roll back to length {length!r}; valid lengths are 0..{self._length}")
        self._length = length

    def reset(self) -> None:
        self.rollback(0)

    def release(self) -> None:
        """Drop the buffers (the memory returns to the allocator); the cache is unusable after."""
        self.keys = None
        self.values = None
        self._length = 0

    def _check_live(self) -> None:
        if self.keys is None:
            raise ValueError("KV cache: used after release()")

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"KVCache(length={self._length}, max_len={s.max_len}, layers={s.num_layers}, "
            f"kv_heads={s.kv_heads}, head_dim={s.head_dim}, dtype={s.dtype}, device={s.device})"
        )


def slow_kv_names(num_hybrid: int) -> list[tuple[str, str]]:
    """Graph tensor names of the slow K and V of each hybrid layer."""
    return [(f"slow_key_{j}", f"slow_value_{j}") for j in range(num_hybrid)]


class DecoderRunner:
    """Feeds the decoder engines of ``model`` (a ``session.RuntimeModel``) from a KV cache.

    ``video`` arguments are ``session.VideoState`` (slow K/V and lengths) or None.

    Rows that cross-attend go to ``decoder``; steps where none does (``upstream`` decode
    steps, text-only prompts) go to ``decoder_nocross`` when the backend has it: the same
    math without any slow input. One-row decode steps run as ``decode_steps`` says
    (:mod:`.decode_graph`: ``dynamic``, ``static`` or ``cuda-graph``; ``auto`` picks).
    """

    def __init__(self, model, decode_steps: str = "auto"):
        text = model.config.text
        dev, dt = model.device, model.dtype
        self._model = model
        self._engine = model.engines["decoder"]
        self._nocross = model.engines.get("decoder_nocross")
        self.decode_steps = resolve_decode_steps(decode_steps, model.backend, torch.device(dev), self._engine)
        self._static = StaticStepCache(capture=self.decode_steps == "cuda-graph")
        logits_info = {i.name: i for i in self._engine.outputs}.get("logits")
        vocab = logits_info.shape[-1] if logits_info and isinstance(logits_info.shape[-1], int) else model.embed_table.shape[0]
        self._logits = torch.zeros((1, vocab), dtype=dt, device=dev)
        table = model.embed_table
        self._token = torch.zeros(1, dtype=torch.long, device=table.device)
        self._embeds_at_table = torch.zeros((1, 1, text.hidden_size), dtype=table.dtype, device=table.device)
        self._embeds = torch.zeros((1, 1, text.hidden_size), dtype=dt, device=dev)
        self._position = torch.zeros((1, 1), dtype=torch.int64, device=dev)
        self._past_length = torch.zeros(1, dtype=torch.int64, device=dev)
        self._rows = {False: torch.zeros(0, dtype=torch.int64, device=dev), True: torch.zeros(1, dtype=torch.int64, device=dev)}
        self._offsets = {
            False: torch.tensor([0, 0], dtype=torch.int32, device=dev),
            True: torch.tensor([0, 1], dtype=torch.int32, device=dev),
        }
        # A text-only prompt has no slow tokens: one zero token with valid length 0 (no row attends).
        hybrid = len(model.config.cross_attn.hybrid_layers)
        empty = torch.zeros((1, text.num_kv_heads, 1, text.head_dim), dtype=dt, device=dev)
        self._no_video = ([empty] * hybrid, [empty] * hybrid, torch.zeros(1, dtype=torch.int32, device=dev))
        self._names = slow_kv_names(hybrid)

    def synchronize(self) -> None:
        self._engine.synchronize()

    def _route(self, video, cross_rows, offsets):
        """The engine for a call with ``cross_rows`` attending, and its slow and cross feeds."""
        if video is not None:
            slow_keys, slow_values, lengths = video.slow_keys, video.slow_values, video.slow_lengths
        else:
            slow_keys, slow_values, lengths = self._no_video
        feeds = {}
        for (k_name, v_name), k, v in zip(self._names, slow_keys, slow_values):
            feeds[k_name], feeds[v_name] = k, v
        feeds["slow_lengths"] = lengths
        feeds["cross_rows"] = cross_rows.to(self._model.device)
        feeds["cross_row_offsets"] = offsets.to(self._model.device)
        if self._nocross is not None and cross_rows.numel() == 0:
            return self._nocross, {}
        return self._engine, feeds

    def step(self, kv: KVCache, video, embeds, positions, cross_rows, offsets) -> torch.Tensor:
        """Run ``L`` new rows at the end of ``kv``; they are written into the cache; returns (vocab,) logits."""
        rows = int(embeds.shape[1])
        past_keys, past_values = kv.past()
        key_slots, value_slots = kv.slots(rows)
        engine, fixed = self._route(video, cross_rows, offsets)
        self._past_length.fill_(kv.length)
        feeds = {"inputs_embeds": embeds, "position_ids": positions, "past_length": self._past_length, **fixed}
        outputs = {"logits": self._logits}
        for i, (pk, pv, sk, sv) in enumerate(zip(past_keys, past_values, key_slots, value_slots)):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = pk, pv
            outputs[f"new_key_{i}"], outputs[f"new_value_{i}"] = sk, sv
        engine.run({name: feeds[name] for name in engine.input_names if name in feeds}, outputs)
        kv.commit(rows)
        return self._logits[0]

    def decode_step(self, kv: KVCache, video, token: int, position: int, attend: bool):
        """One generated token at ``position``: embeddings and indices go into preallocated buffers."""
        self._token.fill_(token)
        torch.index_select(self._model.embed_table, 0, self._token, out=self._embeds_at_table[0])
        self._embeds.copy_(self._embeds_at_table)
        if self.decode_steps == "dynamic" or position != kv.length:
            self._position.fill_(position)
            return self.step(kv, video, self._embeds, self._position, self._rows[attend], self._offsets[attend])
        kv.check_fits(1, "the next token")
        engine, fixed = self._route(video, self._rows[attend], self._offsets[attend])
        # decoder_nocross binds nothing of the video: its step (and graph) serves every video.
        bound_video = video if fixed else None
        fixed = {**fixed, "inputs_embeds": self._embeds}
        self._static.get(engine, kv, fixed, self._logits, bound_video).run(position)
        kv.commit(1)
        return self._logits[0]

    def close(self) -> None:
        """Release every static step and CUDA graph (before the engines they run on close)."""
        self._static.release_all()

    def forget_released(self) -> None:
        """Drop static steps (and their CUDA graphs) bound to a released cache or video, so
        their memory can go."""
        self._static.drop_released()
