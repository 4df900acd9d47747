"""The KV cache of one conversation: explicit buffers allocated once at the maximum length.

Layout (``slowfast_trt.models.qwen2.layers.KV_CACHE_LAYOUT``), per decoder layer ``i``::

    keys[i], values[i]: (batch, max_len, kv_heads, head_dim)

Rows ``0 .. length-1`` are valid. A decoder step with ``L`` new rows reads the past as the
views ``[:, :length]`` (contiguous for batch 1, so an engine binds them by pointer) and
writes its new rows into the views ``[:, length:length+L]`` (:meth:`KVCache.slots`);
:meth:`KVCache.commit` then advances ``length``. Nothing is allocated per step. A
conversation that would not fit is a ``ValueError`` with the numbers, never a truncation.
:meth:`KVCache.rollback` shortens the valid prefix (follow-up questions re-prefill the
rows whose cached values differ from a from-scratch prefill).

:class:`slowfast_trt.runtime.decoder_runner.DecoderRunner` runs the decoder over a cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


__all__ = ["KVCache", "KVCacheSpec", "slow_kv_names"]


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
