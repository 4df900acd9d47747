"""LongVU's two vision towers, our own modules: SigLIP (384 px) and DINOv2 (378 px).

| module      | input                               | output                          |
|-------------|-------------------------------------|---------------------------------|
| SiglipTower | pixels (N, 384, 384, 3) uint8       | features (N, 576, C_siglip) T   |
| DinoTower   | pixels (N, 378, 378, 3) uint8       | features (N, 576, C_dino) T     |

Pixels are the host's pad-to-square + bicubic resize (:mod:`slowfast_trt.models.longvu.pixels`);
each tower normalises them itself (``x / 255``, then its processor's mean and std, float32:
bit-identical to the Hugging Face processors' float64 rescale cast to float32, then float32
normalise).

Features, as upstream's tower wrappers produce them (quirk 3):

* SigLIP: ``hidden_states[-1]`` of ``SiglipVisionModel``, the last encoder layer's output
  **before** ``post_layernorm`` (the pooling head runs upstream but its output is unused, so it
  is not built here); 27 x 27 = 729 tokens, no CLS.
* DINOv2: ``last_hidden_state`` (after the final layernorm) without the CLS token. Position
  embeddings are interpolated from the config's grid (37 x 37 at 518 px) to 27 x 27 the way
  transformers 4.42 does it (quirk 4): bicubic with ``scale_factor = (27 + 0.1) / 37``, not
  ``size = 27`` (they differ by up to 0.44); computed once at load (:meth:`DinoTower.set_positions`).
* Both: the 27 x 27 grid bilinearly resized (float32, ``align_corners=False``, no antialias)
  to 24 x 24 = 576 tokens, row-major.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slowfast_trt.models.longvu.config import DINO_PIXELS, SIGLIP_PIXELS, TOWER_GRID, TowerConfig

__all__ = ["DinoTower", "SiglipTower", "SIGLIP_MEAN", "SIGLIP_STD", "DINO_MEAN", "DINO_STD", "resize_grid"]

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # SiglipImageProcessor
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # BitImageProcessor (ImageNet)


def resize_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(N, s*s, C) row-major grid -> (N, side*side, C): bilinear in float32, align_corners=False."""
    n, count, dim = tokens.shape
    src = int(math.isqrt(count))
    grid = tokens.view(n, src, src, dim).permute(0, 3, 1, 2)
    out = F.interpolate(grid.to(torch.float32), size=(side, side), mode="bilinear", align_corners=False)
    return out.to(tokens.dtype).permute(0, 2, 3, 1).reshape(n, side * side, dim)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, heads, S, D) each -> (N, heads, S, D), softmax in float32 for half inputs."""
    if not torch.onnx.is_in_onnx_export():
        return F.scaled_dot_product_attention(q, k, v)  # never materialises the (S, S) scores on GPU
    scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-1, -2))
    probs = torch.softmax(scores.to(torch.float32), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool, names: tuple[str, str, str, str]):
        super().__init__()
        self.heads = heads
        self.names = names
        for name in names:
            setattr(self, name, nn.Linear(dim, dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, dim = x.shape
        q, k, v = (getattr(self, name)(x).view(n, s, self.heads, dim // self.heads).transpose(1, 2) for name in self.names[:3])
        ctx = _attention(q, k, v).transpose(1, 2).reshape(n, s, dim)
        return getattr(self, self.names[3])(ctx)


def _act(name: str):
    return (lambda x: F.gelu(x, approximate="tanh")) if name == "gelu_pytorch_tanh" else F.gelu


class _Normalize(nn.Module):
    """uint8 NHWC -> normalised NCHW (constants, not buffers: a model built on the meta device
    needs nothing re-initialised)."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device)
        x = (pixels.to(torch.float32) / 255.0 - mean) / std
        return x.permute(0, 3, 1, 2).to(dtype)


class _SiglipLayer(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        d = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = _SelfAttention(d, cfg.num_heads, True, ("q_proj", "k_proj", "v_proj", "out_proj"))
        self.layer_norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, d)
        self.act = _act(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class SiglipTower(nn.Module):
    """SigLIP vision transformer up to its last encoder layer, then 27x27 -> 24x24."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.config = cfg
        grid = SIGLIP_PIXELS // cfg.patch_size
        self.normalize = _Normalize(SIGLIP_MEAN, SIGLIP_STD)
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(grid * grid, cfg.hidden_size))
        self.layers = nn.ModuleList(_SiglipLayer(cfg) for _ in range(cfg.num_layers))

    @property
    def out_dim(self) -> int:
        return self.config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels, self.patch_embedding.weight.dtype)
        x = self.patch_embedding(x).flatten(2).transpose(1, 2) + self.position_embedding[None]
        for layer in self.layers:
            x = layer(x)
        return resize_grid(x, TOWER_GRID)


class _DinoLayer(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        d, hidden = cfg.hidden_size, cfg.dino_mlp_hidden
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attention = _SelfAttention(d, cfg.num_heads, cfg.qkv_bias, ("query", "key", "value", "dense"))
        self.layer_scale1 = nn.Parameter(torch.ones(d))
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.swiglu = cfg.use_swiglu_ffn
        if self.swiglu:
            self.weights_in = nn.Linear(d, 2 * hidden)
            self.weights_out = nn.Linear(hidden, d)
        else:
            self.fc1 = nn.Linear(d, hidden)
            self.fc2 = nn.Linear(hidden, d)
            self.act = _act(cfg.hidden_act)
        self.layer_scale2 = nn.Parameter(torch.ones(d))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.swiglu:
            return self.fc2(self.act(self.fc1(x)))
        x1, x2 = self.weights_in(x).chunk(2, dim=-1)
        return self.weights_out(F.silu(x1) * x2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x)) * self.layer_scale1
        return x + self.mlp(self.norm2(x)) * self.layer_scale2


def interpolate_dino_positions(table: torch.Tensor, patch: int) -> torch.Tensor:
    """(1, 1+g*g, C) position embeddings of the config's grid -> (1, 1+27*27, C) at 378 px.

    transformers 4.42 ``Dinov2Embeddings.interpolate_pos_encoding``: bicubic, float32,
    ``scale_factor = (27 + 0.1) / g`` (the output size is floor(g * factor) = 27); a table already
    of 27 x 27 is used as is.
    """
    target = DINO_PIXELS // patch
    cls_pos, grid_pos = table[:, :1], table[:, 1:]
    side = int(math.isqrt(grid_pos.shape[1]))
    if side == target:
        return table
    dim = table.shape[-1]
    factor = float((target + 0.1) / math.sqrt(grid_pos.shape[1]))
    grid = grid_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    out = F.interpolate(grid.to(torch.float32), scale_factor=(factor, factor), mode="bicubic", align_corners=False)
    if out.shape[-2:] != (target, target):
        raise ValueError(f"DINOv2 position embeddings of a {side}x{side} grid do not interpolate to {target}x{target}")
    out = out.to(table.dtype).permute(0, 2, 3, 1).reshape(1, target * target, dim)
    return torch.cat((cls_pos, out), dim=1)


class DinoTower(nn.Module):
    """DINOv2 at 378 px: patch embedding + CLS + interpolated positions, layers, layernorm,
    CLS dropped, then 27x27 -> 24x24."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_size
        config_grid = cfg.image_size // cfg.patch_size
        self.normalize = _Normalize(DINO_MEAN, DINO_STD)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)
        # As stored (config grid); set_positions derives the 378 px table from it.
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + config_grid * config_grid, d))
        grid = DINO_PIXELS // cfg.patch_size
        self.register_buffer("positions", torch.zeros(1, 1 + grid * grid, d), persistent=False)
        self.layers = nn.ModuleList(_DinoLayer(cfg) for _ in range(cfg.num_layers))
        self.layernorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    @property
    def out_dim(self) -> int:
        return self.config.hidden_size

    def set_positions(self) -> None:
        """Recompute the 378 px position table from ``position_embeddings`` (after loading)."""
        with torch.no_grad():
            self.positions = interpolate_dino_positions(self.position_embeddings, self.config.patch_size).to(
                self.position_embeddings.dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels, self.patch_embedding.weight.dtype)
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.positions
        for layer in self.layers:
            x = layer(x)
        return resize_grid(self.layernorm(x)[:, 1:], TOWER_GRID)
