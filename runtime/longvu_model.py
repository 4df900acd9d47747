"""The loaded LongVU model the runtime drives: engines, tokenizer, embedding table, sizes, and the
:class:`~slowfast_trt.models.longvu.pipeline.Stages` over its engines (towers and connector in
chunks of at most ``vision_batch`` frames, every stage being per frame)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from slowfast_trt.models.longvu.config import LongVUConfig
from slowfast_trt.models.longvu.connector import cell_bias
from slowfast_trt.models.longvu.pipeline import LongVUEncoder, Stages
from slowfast_trt.models.longvu.specs import CHUNK
from slowfast_trt.runtime.kv_cache import KVCacheSpec

__all__ = ["LongVURuntimeModel"]


@dataclass(frozen=True)
class _NoCross:
    hybrid_layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class _DecoderConfig:
    text: Any
    cross_attn: _NoCross = field(default_factory=_NoCross)


@dataclass
class _DecoderView:
    """What :class:`DecoderRunner` reads of a model; a plain Qwen2 decoder has no hybrid layer."""

    engines: dict
    config: _DecoderConfig
    embed_table: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    backend: str


@dataclass
class LongVURuntimeModel:
    """Engines, tokenizer, embedding table and sizes of one loaded LongVU model."""

    engines: dict
    config: LongVUConfig
    tokenizer: Any
    embed_table: torch.Tensor  # (vocab_rows, H), on the host or the device
    newline: torch.Tensor  # (H,) image_newline
    max_seq_len: int
    backend: str
    device: torch.device
    dtype: torch.dtype
    vision_batch: int = CHUNK
    lock: Any = field(default_factory=threading.RLock)

    def embed_ids(self, ids) -> torch.Tensor:
        table = self.embed_table
        rows = table.index_select(0, torch.as_tensor(list(ids), dtype=torch.long, device=table.device))
        return rows.to(device=self.device, dtype=self.dtype)

    def kv_spec(self) -> KVCacheSpec:
        text = self.config.text
        return KVCacheSpec(text.num_layers, text.num_kv_heads, text.head_dim, self.max_seq_len, self.dtype, self.device)

    def decoder_view(self) -> _DecoderView:
        return _DecoderView(self.engines, _DecoderConfig(self.config.text), self.embed_table, self.device, self.dtype,
                            self.backend)

    def _chunks(self, name: str, output: str, feeds_of) -> torch.Tensor:
        engine, parts = self.engines[name], []
        for feeds in feeds_of(self.vision_batch):
            parts.append(engine.run(feeds)[output])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _tower(self, name: str, pixels: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        return self._chunks(name, "features", lambda n: ({"frames": tensor[i:i + n]} for i in range(0, len(tensor), n)))

    def _connector(self, siglip: torch.Tensor, dino: torch.Tensor, mask: torch.Tensor):
        engine, bias = self.engines["connector"], cell_bias(mask.to(self.device))
        highs, lows = [], []
        for i in range(0, siglip.shape[0], self.vision_batch):
            out = engine.run({"siglip_features": siglip[i:i + self.vision_batch].contiguous(),
                              "dino_features": dino[i:i + self.vision_batch].to(siglip.dtype).contiguous(),
                              "cell_bias": bias})
            highs.append(out["high_tokens"])
            lows.append(out["low_tokens"])
        return torch.cat(highs), torch.cat(lows)

    def stages(self) -> Stages:
        return Stages(dino=lambda px: self._tower("dino", px), siglip=lambda px: self._tower("siglip", px),
                      connector=self._connector, embed=self.embed_ids, newline=self.newline.to(self.device, self.dtype))

    def encoder(self) -> LongVUEncoder:
        return LongVUEncoder(self.config, self.stages())

    def synchronize(self) -> None:
        self.engines["decoder"].synchronize()
