"""Qwen2 decoder with Slow-Fast hybrid layers, written for export: explicit caches, no hidden state.

Decoder forward (batch B, L new rows, P cached rows, Ns slow tokens, R attending rows):

| input              | shape                        | dtype  | meaning                                        |
|--------------------|------------------------------|--------|------------------------------------------------|
| inputs_embeds      | (B, L, hidden)               | T      | merged text embeddings and fast visual tokens  |
| position_ids       | (B, L)                       | int64  | absolute positions (P .. P+L-1)                |
| past_length        | (1,)                         | int64  | valid past rows: rows >= it are not attended   |
| past_keys[i]       | (B, P, kv_heads, head_dim)   | T      | KV cache of layer i (layout ``KV_CACHE``)      |
| past_values[i]     | (B, P, kv_heads, head_dim)   | T      |                                                |
| slow_keys[j]       | (B, kv_heads, Ns, head_dim)  | T      | slow K of hybrid layer j (layout ``SLOW_KV``)  |
| slow_values[j]     | (B, kv_heads, Ns, head_dim)  | T      |                                                |
| slow_lengths       | (B,)                         | int32  | valid slow tokens per sequence                 |
| cross_rows         | (R,)                         | int64  | flat indices (b * L + l) of attending rows     |
| cross_row_offsets  | (B + 1,)                     | int32  | rows of sequence b: offsets[b] .. offsets[b+1] |
| -> logits          | (B, vocab) or (B, L, vocab)  | T      | last position, or all with ``all_logits``      |
| -> new_keys[i]     | (B, L, kv_heads, head_dim)   | T      | rows to append to the KV cache                 |
| -> new_values[i]   | (B, L, kv_heads, head_dim)   | T      |                                                |

``past_length`` lets one graph serve two ways of passing the cache. Dynamic: the past is the
valid prefix (P = past_length), as in prefill. Static: the past is the whole preallocated
cache (P = max_len, every step the same shapes and addresses, what a CUDA graph replays) and
``past_length`` masks the rows not yet written. Rows at or beyond ``past_length`` must hold
finite values (the runtime's cache is zero-filled): a masked probability is exactly 0, and
0 x finite = 0. Omitted (None), it is P. The new rows' keys attend causally among themselves.
Attention is computed as two blocks, past and new, sharing one softmax, so the cache is read
in place and never concatenated with the new rows (a copy of the whole cache per layer and
step in a static graph).

Hybrid layer math (upstream ``Qwen2HybridFlashAttention2.onlytext2media_cross_attn``): the
attending rows take the post-RoPE self-attention queries, attend to the layer-normed and
projected slow tokens, and the gated context is added to the self-attention output before
``o_proj``. Rows not listed in ``cross_rows`` are untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import CrossAttnConfig, TextConfig
from .custom_op import cross_attention

KV_CACHE_LAYOUT = "[batch, seq, kv_heads, head_dim]"
SLOW_KV_LAYOUT = "[batch, kv_heads, slow_tokens, head_dim]"


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


class CrossAttnBranch(nn.Module):
    """The hybrid layer's extra parameters: slow K/V projection and the gate."""

    def __init__(self, text: TextConfig, cross: CrossAttnConfig):
        super().__init__()
        self.num_kv_heads = text.num_kv_heads
        self.head_dim = text.head_dim
        self.kv_proj = nn.Linear(text.hidden_size, 2 * text.num_kv_heads * text.head_dim, bias=True)
        self.gate_proj = nn.Linear(text.hidden_size, 1, bias=True)
        self.warmup_gate = nn.Parameter(torch.zeros(1)) if cross.gate_warmup else None
        self.gate_tanh = cross.gate_tanh
        self.warmup_through_tanh = cross.warmup_through_tanh

    def project_slow(self, normed_slow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Ns, hidden) layer-normed slow tokens -> K, V of layout SLOW_KV_LAYOUT.

        Upstream views the projection as (H_kv, KV, D): feature = ((kv_head*2 + {K:0, V:1})*D + d).
        """
        bsz, ns, _ = normed_slow.shape
        kv = self.kv_proj(normed_slow).view(bsz, ns, self.num_kv_heads, 2, self.head_dim)
        return kv[:, :, :, 0].transpose(1, 2).contiguous(), kv[:, :, :, 1].transpose(1, 2).contiguous()

    def gate(self, attn_rows: torch.Tensor) -> torch.Tensor:
        """(R, hidden) self-attention output rows -> (R, 1) gate."""
        gate = self.gate_proj(attn_rows)
        if self.gate_tanh:
            gate = torch.tanh(gate)
        if self.warmup_gate is not None:
            warm = torch.tanh(self.warmup_gate) if self.warmup_through_tanh else self.warmup_gate
            gate = gate * warm
        return gate


class DecoderLayer(nn.Module):
    def __init__(self, text: TextConfig, cross: CrossAttnConfig | None):
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
        self.cross = CrossAttnBranch(text, cross) if cross is not None else None

    @property
    def is_hybrid(self) -> bool:
        return self.cross is not None

    def slow_kv(self, slow_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slow K/V of this hybrid layer; depends only on the video, computed once per video."""
        assert self.cross is not None
        return self.cross.project_slow(self.input_layernorm(slow_tokens))

    def forward(self, x, cos, sin, past_key, past_value, slow=None, past_length=None):
        bsz, length, _ = x.shape
        h = self.input_layernorm(x)
        q = apply_rope(self.q_proj(h).view(bsz, length, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(h).view(bsz, length, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(h).view(bsz, length, self.num_kv_heads, self.head_dim)
        attn = causal_attention(q, past_key, past_value, k, v, past_length)
        if self.cross is not None and slow is not None:
            attn = self._add_cross_attention(attn, q, *slow)
        x = x + self.o_proj(attn)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v

    def _add_cross_attention(self, attn, q, slow_key, slow_value, slow_lengths, cross_rows, cross_row_offsets):
        bsz, length, width = attn.shape
        flat_attn = attn.reshape(bsz * length, width)
        attn_rows = flat_attn.index_select(0, cross_rows)
        q_rows = q.reshape(bsz * length, self.num_heads, self.head_dim).index_select(0, cross_rows)
        out_rows = cross_attention(
            q_rows, slow_key, slow_value, slow_lengths, cross_row_offsets,
            residual=attn_rows, gate=self.cross.gate(attn_rows),
        )
        return flat_attn.index_copy(0, cross_rows, out_rows).view(bsz, length, width)


class HybridDecoder(nn.Module):
    """Qwen2 layers (some hybrid), final norm and LM head. See the module table."""

    def __init__(self, text: TextConfig, cross: CrossAttnConfig):
        super().__init__()
        self.text = text
        hybrid = set(cross.hybrid_layers)
        self.layers = nn.ModuleList(
            DecoderLayer(text, cross if i in hybrid else None) for i in range(text.num_layers)
        )
        self.hybrid_layer_ids = tuple(sorted(hybrid))
        self.norm = RMSNorm(text.hidden_size, text.rms_norm_eps)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)

    def slow_kv(self, slow_tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, Ns, hidden) slow tokens -> per hybrid layer K and V (layout SLOW_KV_LAYOUT)."""
        keys, values = [], []
        for i in self.hybrid_layer_ids:
            k, v = self.layers[i].slow_kv(slow_tokens)
            keys.append(k)
            values.append(v)
        return keys, values

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        past_keys: list[torch.Tensor],
        past_values: list[torch.Tensor],
        past_length: torch.Tensor | None = None,
        slow_keys: list[torch.Tensor] | None = None,
        slow_values: list[torch.Tensor] | None = None,
        slow_lengths: torch.Tensor | None = None,
        cross_rows: torch.Tensor | None = None,
        cross_row_offsets: torch.Tensor | None = None,
        all_logits: bool = False,
    ):
        cos, sin = rope_cos_sin(position_ids, self.text.head_dim, self.text.rope_theta, inputs_embeds.dtype)
        attend = cross_rows is not None and slow_keys is not None and cross_rows.numel() > 0
        x = inputs_embeds
        new_keys, new_values = [], []
        hybrid_index = {layer_id: j for j, layer_id in enumerate(self.hybrid_layer_ids)}
        for i, layer in enumerate(self.layers):
            slow = None
            if attend and layer.is_hybrid:
                j = hybrid_index[i]
                slow = (slow_keys[j], slow_values[j], slow_lengths, cross_rows, cross_row_offsets)
            x, k, v = layer(x, cos, sin, past_keys[i], past_values[i], slow, past_length)
            new_keys.append(k)
            new_values.append(v)
        x = self.norm(x if all_logits else x[:, -1])
        return self.lm_head(x), new_keys, new_values
