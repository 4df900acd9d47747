"""The SVA connector and the projector: tower features of K kept frames -> LM-width visual tokens.

| input / output | shape             | dtype | meaning                                                   |
|----------------|-------------------|-------|-----------------------------------------------------------|
| siglip         | (K, 576, C_sig)   | T     | SigLIP features of the kept frames                        |
| dino           | (K, 576, C_dino)  | T     | DINOv2 features of the same frames                        |
| cell_bias      | (Q, 2*r*r)        | f32   | per query cell: 0 for a visible tower token, -inf if not  |
| -> high        | (K, Q, hidden)    | T     | high-resolution tokens (12 x 12 grid, row-major)          |
| -> low         | (K, l*l, hidden)  | T     | low-resolution tokens (8 x 8 grid)                        |

Q = ``image_token_len`` (144), r = 24 / 12 = 2 tower tokens per cell side, l = ``lowres_token``.
The newline token and the unpadding are not here: they depend on the frame size only and are
applied on the host (:mod:`slowfast_trt.models.longvu.tokens`).

Upstream (``cambrian_arch.py`` ``prepare_inputs_labels_for_multimodal``, ``vision_sampler.py``):

* per tower ``mm_projector_aux_i`` = Linear -> GELU -> Linear -> LayerNorm to Dv;
* context per frame = mean of **all** 576 projected SigLIP tokens (padding included, quirk 16);
* the 144 queries all start as the one learned ``vision_query``; each query cell (i, j) sees the
  2x2 block of tokens (2i.., 2j..) of both towers (8 keys) plus a per-tower position embedding;
  a cell whose tokens are all masked attends to all of them (quirk 16);
* ``connector_depth`` layers of: ``x = proj_in([q, proj_context(g)])``, 16-head cross-attention
  (no biases, LayerNorm before each projection), ``x = LayerNorm(x + attn)``, MLP, ``q = x + q``;
* high = ``mm_projector(S)``; low = ``mm_projector(bilinear 12x12 -> 8x8 of S)`` (the downsample
  comes **before** the projector, quirk 13).

The per-cell attention over 8 keys is written as products and sums over small axes (no batched
(N, 1, 8) matmuls), the same in eager PyTorch and in the exported graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slowfast_trt.models.longvu.config import SVA_HEADS, TOWER_GRID, LongVUConfig

__all__ = ["Connector", "cell_bias", "group_cells"]


def cell_bias(mask: torch.Tensor) -> torch.Tensor:
    """(Q, 2*r*r) bool visibility -> float32 additive bias of the scores (0 / -inf)."""
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, zero, torch.full((), float("-inf"), device=mask.device))


def _ln_linear(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim, bias=False))


class _AuxProjector(nn.Sequential):
    """``mm_projector_aux_i``: Linear(C_tower, Dv), GELU, Linear(Dv, Dv), LayerNorm(Dv)."""

    def __init__(self, tower_dim: int, dv: int):
        super().__init__(nn.Linear(tower_dim, dv), nn.GELU(), nn.Linear(dv, dv), nn.LayerNorm(dv))


class _MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.linear_2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x)))


class _CrossAttention(nn.Module):
    """MultiKVCrossAttention with two towers: one query per cell, 2 x r*r keys."""

    def __init__(self, dim: int):
        super().__init__()
        self.q_proj = _ln_linear(dim)
        self.k_proj_0, self.k_proj_1 = _ln_linear(dim), _ln_linear(dim)
        self.v_proj_0, self.v_proj_1 = _ln_linear(dim), _ln_linear(dim)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, queries, latents, bias):
        """queries (K, Q, D); latents: two (K, Q, r*r, D); bias (Q, 1, 2*r*r) 0 / -inf -> (K, Q, D)."""
        k, q_cells, dim = queries.shape
        head_dim = dim // SVA_HEADS
        q = self.q_proj(queries).view(k, q_cells, 1, SVA_HEADS, head_dim)
        keys = torch.cat((self.k_proj_0(latents[0]), self.k_proj_1(latents[1])), dim=2)
        values = torch.cat((self.v_proj_0(latents[0]), self.v_proj_1(latents[1])), dim=2)
        keys = keys.view(k, q_cells, -1, SVA_HEADS, head_dim)
        values = values.view(k, q_cells, -1, SVA_HEADS, head_dim)
        scores = (q * keys).sum(-1) * (head_dim**-0.5)  # K, Q, 8, heads
        scores = scores.to(torch.float32) + bias.transpose(1, 2)
        probs = torch.softmax(scores, dim=2).to(queries.dtype)
        ctx = (probs[..., None] * values).sum(2)  # K, Q, heads, head_dim
        return self.o_proj(ctx.reshape(k, q_cells, dim))


class _SamplerLayer(nn.Module):
    """VisionCrossAttentionLayer (upstream parameter names)."""

    def __init__(self, dim: int, cells_per_side: int):
        super().__init__()
        self.proj_context = nn.Linear(dim, dim, bias=False)
        self.proj_in = nn.Linear(2 * dim, dim, bias=False)
        self.proj_out = _MLP(dim)
        self.norm = nn.LayerNorm(dim)
        self.cross_attn = _CrossAttention(dim)
        self.pos_embed_0 = nn.Parameter(torch.zeros(cells_per_side**2, dim))
        self.pos_embed_1 = nn.Parameter(torch.zeros(cells_per_side**2, dim))

    def forward(self, queries, context, latents, bias):
        residual = queries
        context = self.proj_context(context).expand(-1, queries.shape[1], -1)
        x = self.proj_in(torch.cat((queries, context), dim=-1))
        with_pos = (latents[0] + self.pos_embed_0.to(latents[0].dtype), latents[1] + self.pos_embed_1.to(latents[1].dtype))
        x = self.norm(x + self.cross_attn(x, with_pos, bias))
        return self.proj_out(x) + residual


class _Sampler(nn.Module):
    def __init__(self, dim: int, depth: int, cells_per_side: int):
        super().__init__()
        self.layers = nn.ModuleList(_SamplerLayer(dim, cells_per_side) for _ in range(depth))


def group_cells(features: torch.Tensor, side: int) -> torch.Tensor:
    """(K, 24*24, D) -> (K, side*side, r*r, D): the r x r block of tokens of each query cell."""
    k, _, dim = features.shape
    r = TOWER_GRID // side
    grid = features.view(k, side, r, side, r, dim).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(k, side * side, r * r, dim)


class Connector(nn.Module):
    """Per-tower projectors, the SVA sampler and ``mm_projector`` (see the module table)."""

    def __init__(self, config: LongVUConfig, siglip_dim: int, dino_dim: int):
        super().__init__()
        dv, hidden = config.vision_hidden, config.text.hidden_size
        self.config = config
        self.aux_0 = _AuxProjector(siglip_dim, dv)
        self.aux_1 = _AuxProjector(dino_dim, dv)
        self.sampler = _Sampler(dv, config.connector_depth, config.kv_size)
        self.projector = nn.Sequential(nn.Linear(dv, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.vision_query = nn.Parameter(torch.zeros(1, dv))
        self.image_newline = nn.Parameter(torch.zeros(hidden))

    def sample(self, siglip: torch.Tensor, dino: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """-> S (K, Q, Dv), the SVA output before the projector."""
        side = self.config.query_side
        f_sig, f_dino = self.aux_0(siglip), self.aux_1(dino)
        context = f_sig.mean(1, keepdim=True)  # K, 1, Dv: all 576 tokens (quirk 16)
        latents = (group_cells(f_sig, side), group_cells(f_dino, side))
        bias = bias.to(torch.float32)[:, None, :]
        k = siglip.shape[0]
        queries = self.vision_query.to(f_sig.dtype).view(1, 1, -1).expand(k, side * side, -1)
        for layer in self.sampler.layers:
            queries = layer(queries, context, latents, bias)
        return queries

    def low_grid(self, sampled: torch.Tensor) -> torch.Tensor:
        """(K, Q, Dv) -> (K, l*l, Dv): bilinear 12x12 -> 8x8 in float32 (before the projector)."""
        k, cells, dv = sampled.shape
        side, low = self.config.query_side, self.config.lowres_token
        grid = sampled.permute(0, 2, 1).reshape(k, dv, side, side)
        out = F.interpolate(grid.to(torch.float32), size=(low, low), mode="bilinear", align_corners=False)
        return out.to(sampled.dtype).permute(0, 2, 3, 1).reshape(k, low * low, dv)

    def forward(self, siglip: torch.Tensor, dino: torch.Tensor, bias: torch.Tensor):
        """-> high (K, Q, H), low (K, l*l, H); ``bias`` from :func:`cell_bias`."""
        sampled = self.sample(siglip, dino, bias)
        return self.projector(sampled), self.projector(self.low_grid(sampled))
