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
How attention is computed (eager prefill, eager decode step, exported graph) is described at
:func:`causal_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def causal_attention(q, past_k, past_v, k, v, past_length=None, graph_bias=None) -> torch.Tensor:
    """GQA attention of L new rows over the past and themselves.

    q: (B, L, H, D); past_k/past_v: (B, P, Hkv, D); k/v: (B, L, Hkv, D) -> (B, L, H*D).
    Row l sees past rows < ``past_length`` (a (1,) int64 tensor; None: all P) and new rows
    0 .. l. Q, K and V stay in the model dtype (no float32 copy of the cache); products
    accumulate in float32 and the softmax is float32 for half inputs (float64 stays float64).

    Three forms, one result:

    * exported graphs (:func:`attention_graph`): one MatMul -> Add(mask) -> Softmax -> MatMul
      chain over the past and new keys concatenated, the pattern TensorRT fuses into one
      attention kernel;
    * eager prefill (L > 1): ``scaled_dot_product_attention`` (causal, or with the mask when
      there is a past), which never materialises the (L, P+L) scores on CPU or GPU;
    * eager decode (L == 1): two blocks, past and new, sharing one softmax, so the cache is
      read in place and never concatenated (a copy of the whole cache per layer and step in a
      static graph); no host reads, so a CUDA graph can capture it.
    """
    if torch.onnx.is_in_onnx_export():
        return attention_graph(q, past_k, past_v, k, v, past_length, graph_bias)
    bsz, length, heads, dim = q.shape
    if length == 1:
        return _decode_attention(q, past_k, past_v, k, v, past_length)
    past = past_k.shape[1]
    qt = q.transpose(1, 2)  # B,H,L,D (a view: SDPA takes strided inputs)
    if past == 0:
        ctx = F.scaled_dot_product_attention(qt, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True)
    else:
        keys = torch.cat((past_k, k), dim=1).transpose(1, 2)
        values = torch.cat((past_v, v), dim=1).transpose(1, 2)
        mask = _visible(length, past, past_length, q.device)
        ctx = F.scaled_dot_product_attention(qt, keys, values, attn_mask=mask, enable_gqa=True)
    return ctx.transpose(1, 2).reshape(bsz, length, heads * dim)


def _visible(length: int, past: int, past_length, device, groups: int = 1) -> torch.Tensor:
    """(groups*L, P+L) bool: row g*L + l sees past rows < past_length and new rows 0 .. l."""
    new_pos = torch.arange(length, device=device)
    causal = new_pos[None, :] <= new_pos[:, None]
    if past_length is None:
        valid = torch.ones((1, past), dtype=torch.bool, device=device)
    else:
        valid = (torch.arange(past, device=device) < past_length)[None, :]
    mask = torch.cat((valid.expand(length, past), causal), dim=1)
    return mask if groups == 1 else mask.repeat(groups, 1)


def _stack_groups(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, L, H, D) -> (B, Hkv, G*L, D): a KV head's G query heads stacked as G*L rows, so each
    product is one (G*L, D) x (D, S) matrix per KV head. Broadcasting K over a group axis
    instead makes matmul expand K and V G times (measured on CPU at S = 8192: 123 ms against
    1.8 ms a layer)."""
    bsz, length, heads, dim = q.shape
    qg = q.reshape(bsz, length, kv_heads, heads // kv_heads, dim).permute(0, 2, 3, 1, 4)
    return qg.reshape(bsz, kv_heads, heads // kv_heads * length, dim)


def _unstack_groups(ctx: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    bsz, kv_heads, rows, dim = ctx.shape
    ctx = ctx.view(bsz, kv_heads, rows // length, length, dim)
    return ctx.permute(0, 3, 1, 2, 4).reshape(bsz, length, rows * kv_heads * dim // length).to(dtype)


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _decode_attention(q, past_k, past_v, k, v, past_length) -> torch.Tensor:
    """L == 1: the past block and the new block share one softmax; the cache is read in place."""
    dim, past, kv_heads = q.shape[-1], past_k.shape[1], k.shape[2]
    qg = _stack_groups(q, kv_heads)  # B,Hkv,G,D
    # No reshape touches a key axis: it may be 0 (empty past), which ONNX Reshape reads as "copy".
    scores_past = torch.matmul(qg, past_k.permute(0, 2, 3, 1)).to(_softmax_dtype(q.dtype)) * (dim**-0.5)
    scores_new = torch.matmul(qg, k.permute(0, 2, 3, 1)).to(scores_past.dtype) * (dim**-0.5)
    if past_length is not None:
        valid = torch.arange(past, device=q.device) < past_length  # (P,)
        scores_past = scores_past.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(torch.cat((scores_past, scores_new), dim=-1), dim=-1).to(q.dtype)
    ctx = torch.matmul(probs[..., :past], past_v.permute(0, 2, 1, 3)) + torch.matmul(probs[..., past:], v.permute(0, 2, 1, 3))
    return _unstack_groups(ctx, 1, q.dtype)


def graph_attention_bias(x: torch.Tensor, past_k: torch.Tensor, past_length=None) -> torch.Tensor:
    """(L, P+L) additive mask (0 visible, -inf not) for L = ``x.shape[1]`` new rows over P =
    ``past_k.shape[1]`` cached ones: built once per exported decoder and given to every layer's
    :func:`attention_graph` (per layer it was 15% of ONNX Runtime's prefill: Where, LessOrEqual,
    Range, Concat on (L, P+L) tensors, once per layer)."""
    visible = _visible(x.shape[1], past_k.shape[1], past_length, x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(visible, zero, torch.full((), float("-inf"), dtype=x.dtype, device=x.device))


def attention_graph(q, past_k, past_v, k, v, past_length=None, bias=None) -> torch.Tensor:
    """The exported form of :func:`causal_attention` (same arguments and result); ``bias``:
    :func:`graph_attention_bias` of this call's rows, when the caller built it once for all layers.

    Q is scaled before the first product (TensorRT's fused attention requires it), the keys
    are the past and new rows concatenated, and the mask is added to the scores:
    ``MatMul -> Add -> [Cast float32] -> Softmax -> [Cast] -> MatMul`` on (B, Hkv, G*L, .)
    tensors, plain multi-head attention with Hkv heads. Q, K and V stay in the model dtype;
    the Casts exist only for half graphs."""
    bsz, length, heads, dim = q.shape
    kv_heads = k.shape[2]
    qg = _stack_groups(q, kv_heads) * (dim**-0.5)
    keys = torch.cat((past_k, k), dim=1)
    values = torch.cat((past_v, v), dim=1)
    scores = torch.matmul(qg, keys.permute(0, 2, 3, 1))  # B,Hkv,G*L,P+L
    if bias is None:
        bias = graph_attention_bias(q, past_k, past_length)  # (L, P+L), once for all groups
    bias = bias.to(scores.dtype)
    # Split the row axis only (G, L): the key axis keeps its size (-1), so the mask broadcasts
    # over the groups instead of being tiled G times.
    scores = scores.view(bsz, kv_heads, heads // kv_heads, length, -1) + bias
    probs = torch.softmax(scores.to(_softmax_dtype(q.dtype)), dim=-1).to(q.dtype)
    probs = probs.view(bsz, kv_heads, heads // kv_heads * length, -1)
    return _unstack_groups(torch.matmul(probs, values.permute(0, 2, 1, 3)), length, q.dtype)


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

    def forward(self, x, cos, sin, past_key, past_value, past_length=None, graph_bias=None):
        return self.block(x, cos, sin, past_key, past_value, past_length, graph_bias=graph_bias)

    def block(self, x, cos, sin, past_key, past_value, past_length=None, mix_attention=None, graph_bias=None):
        """-> (x, new keys, new values). ``mix_attention(attn, q) -> attn`` adds a family's extra
        attention to the self-attention output before ``o_proj``; ``graph_bias``: the exported
        decoders' one attention mask for all layers (:func:`graph_attention_bias`)."""
        bsz, length, _ = x.shape
        h = self.input_layernorm(x)
        q = apply_rope(self.q_proj(h).view(bsz, length, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(h).view(bsz, length, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(h).view(bsz, length, self.num_kv_heads, self.head_dim)
        attn = causal_attention(q, past_key, past_value, k, v, past_length, graph_bias)
        if mix_attention is not None:
            attn = mix_attention(attn, q)
        x = x + self.o_proj(attn)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v
