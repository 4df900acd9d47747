"""The whole LongVU model in PyTorch: both towers, the connector, the embedding, a plain Qwen2.

The model holds no per-request state. Frame selection, the resolution mode, unpadding, the
text-guided upgrade and the spatial drop are host decisions in
:mod:`slowfast_trt.models.longvu.selection` and :mod:`slowfast_trt.models.longvu.tokens`, made
between the module calls below, so the same code drives the eager modules and the engines.
"""

from __future__ import annotations

import torch
from torch import nn

from slowfast_trt.models.longvu.config import LongVUConfig, TowerConfig
from slowfast_trt.models.longvu.connector import Connector, cell_bias
from slowfast_trt.models.longvu.towers import DinoTower, SiglipTower
from slowfast_trt.models.qwen2.decoder import Qwen2Decoder

__all__ = ["CHUNK_FRAMES", "LongVUModel"]

CHUNK_FRAMES = 64  # encode_images: towers run in chunks of 64 frames (per-frame independent)


class LongVUModel(nn.Module):
    """SigLIP + DINOv2 towers, SVA connector and projector, token embedding, Qwen2 decoder."""

    def __init__(self, config: LongVUConfig, siglip: TowerConfig, dino: TowerConfig, vocab_rows: int | None = None):
        super().__init__()
        self.config = config
        self.vocab_rows = vocab_rows or config.text.vocab_size
        self.siglip = SiglipTower(siglip)
        self.dino = DinoTower(dino)
        self.connector = Connector(config, siglip.hidden_size, dino.hidden_size)
        self.embed_tokens = nn.Embedding(self.vocab_rows, config.text.hidden_size)
        self.decoder = Qwen2Decoder(config.text, self.vocab_rows)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @staticmethod
    def _chunked(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([tower(pixels[i : i + CHUNK_FRAMES]) for i in range(0, pixels.shape[0], CHUNK_FRAMES)])

    def dino_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (T, 378, 378, 3) -> (T, 576, C_dino)."""
        return self._chunked(self.dino, pixels.to(self.device))

    def siglip_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (K, 384, 384, 3) -> (K, 576, C_siglip)."""
        return self._chunked(self.siglip, pixels.to(self.device))

    def connect(self, siglip: torch.Tensor, dino: torch.Tensor, cell_mask: torch.Tensor):
        """-> high (K, 144, H), low (K, 64, H) tokens of the kept frames."""
        return self.connector(siglip, dino, cell_bias(cell_mask.to(siglip.device)))

    def empty_cache(self, batch: int = 1):
        """An empty KV cache (length 0) for every decoder layer."""
        return self.decoder.empty_cache(batch, self.device, self.dtype)

    def embed(self, ids) -> torch.Tensor:
        """Token ids (a sequence of ints, no placeholder) -> (len, H)."""
        return self.embed_tokens(torch.as_tensor(list(ids), dtype=torch.long, device=self.device).view(-1))
