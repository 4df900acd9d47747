"""Qwen2 layers shared by every family, written for export: explicit caches, no hidden state.

RMSNorm, rotary embeddings, the MLP, causal attention over an explicit KV cache (layout
``KV_CACHE_LAYOUT``) and :class:`Qwen2Layer`, one decoder block whose attention output a family
may mix with more (the Slow-Fast hybrid layers add their cross-attention there).

``past_length`` lets one graph serve two ways of passing the cache. Dynamic: the past is the
valid prefix (P = past_length), as in prefill. Static: the past is the whole preallocated
cache (P = max_len, every step the same shapes and addresses, what a CUDA graph replays) and
``past_length`` masks the rows not yet written. Rows at or beyond ``past_length`` must hold
finite values (the runtime's cache is zero-filled): a masked probability is exactly 0, and
0 x finite = 0. Omitted (None), it is P. The new rows' keys attend causally among themselves.
Attention is computed as two blocks, past and new, sharing one softmax, so the cache is read
in place and never concatenated with the new rows (a copy of the whole cache per layer and
step in a static graph).
"""

from __future__ import annotations

import torch
from torch import nn

from slowfast_trt.models.qwen2.config import TextConfig

KV_CACHE_LAYOUT = "[batch, seq, kv_heads, head_dim]"


class RMSNorm(nn.Module):
    """Qwen2RMSNorm: normalise in float32 (float64 stays float64), cast back, then scale."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        up = x.to(torch.float64 if dtype == torch.float64 else torch.float32)
        up = up * torch.rsqrt(up.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * up.to(dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape (B, L, head_dim), computed in float32 like upstream, then cast."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, L, heads, D); cos/sin: (B, L, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def causal_attention(q, past_k, past_v, k, v, past_length=None) -> torch.Tensor:
    """GQA attention of L new rows over the past and themselves.

    q: (B, L, H, D); past_k/past_v: (B, P, Hkv, D); k/v: (B, L, Hkv, D) -> (B, L, H*D).
    Row l sees past rows < ``past_length`` (a (1,) int64 tensor; None: all P) and new rows
    0 .. l. Scores and softmax in float32 for half inputs (float64 stays float64).

    The G query heads of a KV head are stacked as G*L rows of one matrix, so each block is one
    (G*L, D) x (D, S) product per KV head: broadcasting K over a group axis instead makes
    matmul expand K and V G times (measured on CPU at S = 8192: 123 ms against 1.8 ms a layer).
    """
    bsz, length, heads, dim = q.shape
    kv_heads, past = k.shape[2], past_k.shape[1]
    groups = heads // kv_heads
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.to(compute).reshape(bsz, length, kv_heads, groups, dim).permute(0, 2, 3, 1, 4)
    qg = qg.reshape(bsz, kv_heads, groups * length, dim)  # B,Hkv,G*L,D

    # No reshape touches a key axis: it may be 0 (empty past), which ONNX Reshape reads as "copy".
    def block_scores(keys):  # (B, S, Hkv, D) -> B,Hkv,G*L,S
        return torch.matmul(qg, keys.to(compute).permute(0, 2, 3, 1)) * (dim**-0.5)

    new_pos = torch.arange(length, device=q.device)
    causal = (new_pos[None, :] <= new_pos[:, None]).repeat(groups, 1)  # (G*L, L): row g*L + l sees 0..l
    scores_new = block_scores(k).masked_fill(~causal, float("-inf"))
    scores_past = block_scores(past_k)
    if past_length is not None:
        valid = torch.arange(past, device=q.device) < past_length  # (P,)
        scores_past = scores_past.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(torch.cat((scores_past, scores_new), dim=-1), dim=-1)

    def block_context(p, values):  # B,Hkv,G*L,S x (B, S, Hkv, D) -> B,Hkv,G*L,D
        return torch.matmul(p, values.to(compute).permute(0, 2, 1, 3))

    ctx = block_context(probs[..., :past], past_v) + block_context(probs[..., past:], v)
    ctx = ctx.view(bsz, kv_heads, groups, length, dim)
    return ctx.permute(0, 3, 1, 2, 4).reshape(bsz, length, heads * dim).to(q.dtype)


class Qwen2Layer(nn.Module):
    """One Qwen2 decoder block: RMSNorm, self-attention with RoPE over the KV cache, MLP."""

    def __init__(self, text: TextConfig):
        super().__init__()
        self.num_heads = text.num_heads
        self.num_kv_heads = text.num_kv_heads
        self.head_dim = text.head_dim
        hidden, qkv_dim = text.hidden_size, text.num_kv_heads * text.head_dim
        self.q_proj = nn.Linear(hidden, hidden, bias=True)
        self.k_proj = nn.Linear(hidden, qkv_dim, bias=True)
        self.v_proj = nn.Linear(hidden, qkv_dim, bias=True)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.mlp = MLP(hidden, text.intermediate_size)
        self.input_layernorm = RMSNorm(hidden, text.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, text.rms_norm_eps)

    def forward(self, x, cos, sin, past_key, past_value, past_length=None):
        return self.block(x, cos, sin, past_key, past_value, past_length)

    def block(self, x, cos, sin, past_key, past_value, past_length=None, mix_attention=None):
        """-> (x, new keys, new values). ``mix_attention(attn, q) -> attn`` adds a family's extra
        attention to the self-attention output before ``o_proj``."""
        bsz, length, _ = x.shape
        h = self.input_layernorm(x)
        q = apply_rope(self.q_proj(h).view(bsz, length, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(h).view(bsz, length, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(h).view(bsz, length, self.num_kv_heads, self.head_dim)
        attn = causal_attention(q, past_key, past_value, k, v, past_length)
        if mix_attention is not None:
            attn = mix_attention(attn, q)
        x = x + self.o_proj(attn)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v
