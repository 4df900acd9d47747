"""The whole Slow-Fast model in PyTorch, assembled from the exportable modules in ``export/``.

The model holds no per-request state: the visual tokens, the slow K/V and the KV cache are
values the caller passes around (see :mod:`slowfast_trt.models.slowfast.decoder` for the layouts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.convnext import ConvNeXtSpec, ConvNeXtTower
from slowfast_trt.models.slowfast.decoder import HybridDecoder
from slowfast_trt.models.slowfast.visual_tokens import Projector, encode_visual_tokens


@dataclass(frozen=True)
class VisualTokens:
    """Encoded video: ``slow`` (Ns, hidden) feeds the cross-attention, ``fast`` (Nf, hidden) the prompt."""

    slow: torch.Tensor
    fast: torch.Tensor
    frames: int


@dataclass(frozen=True)
class SlowKV:
    """Per hybrid layer slow K and V, each (B, kv_heads, Ns, head_dim), and valid lengths (B,)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    lengths: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0


class SlowFastModel(nn.Module):
    """Vision tower + projector + token embedding + hybrid Qwen2 decoder (with LM head)."""

    def __init__(self, config: SlowFastConfig, vision_spec: ConvNeXtSpec, vocab_rows: int | None = None):
        super().__init__()
        self.config = config
        text = config.text
        self.vocab_rows = vocab_rows or text.vocab_size
        self.vision = ConvNeXtTower(vision_spec)
        if self.vision.out_dim != config.visual.mm_hidden_size:
            raise ValueError(
                f"{config.source}: mm_hidden_size {config.visual.mm_hidden_size} does not match the "
                f"vision tower's last width {self.vision.out_dim}"
            )
        self.projector = Projector(config.visual, text.hidden_size)
        self.embed_tokens = nn.Embedding(self.vocab_rows, text.hidden_size)
        self.decoder = HybridDecoder(text, config.cross_attn)
        if self.vocab_rows != text.vocab_size:
            self.decoder.lm_head = nn.Linear(text.hidden_size, self.vocab_rows, bias=False)
        if text.tie_word_embeddings:
            self.decoder.lm_head.weight = self.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def encode_video(self, pixels: torch.Tensor) -> VisualTokens:
        """(T, 3, S, S) normalised frames -> slow and fast tokens."""
        features = self.vision(pixels.to(self.dtype))
        slow, fast = encode_visual_tokens(features, self.projector, self.config.visual)
        return VisualTokens(slow=slow, fast=fast, frames=int(pixels.shape[0]))

    def compute_slow_kv(self, slow: torch.Tensor) -> SlowKV:
        """(Ns, hidden) or (B, Ns, hidden) slow tokens -> cached slow K/V of every hybrid layer."""
        if slow.dim() == 2:
            slow = slow[None]
        keys, values = self.decoder.slow_kv(slow)
        lengths = torch.full((slow.shape[0],), slow.shape[1], dtype=torch.int32, device=slow.device)
        return SlowKV(tuple(keys), tuple(values), lengths)

    def empty_cache(self, batch: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """An empty KV cache (length 0) for every layer."""
        text = self.config.text
        shape = (batch, 0, text.num_kv_heads, text.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(text.num_layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(text.num_layers)]
        return keys, values
