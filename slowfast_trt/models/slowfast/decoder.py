"""The Slow-Fast decoder: Qwen2 layers (shared, :mod:`slowfast_trt.models.qwen2.layers`), some hybrid.

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

``past_length``: see :mod:`slowfast_trt.models.qwen2.layers`.

Hybrid layer math (upstream ``Qwen2HybridFlashAttention2.onlytext2media_cross_attn``): the
attending rows take the post-RoPE self-attention queries, attend to the layer-normed and
projected slow tokens, and the gated context is added to the self-attention output before
``o_proj``. Rows not listed in ``cross_rows`` are untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from slowfast_trt.models.qwen2.layers import RMSNorm, Qwen2Layer, graph_attention_bias, rope_cos_sin
from slowfast_trt.models.slowfast.config import CrossAttnConfig, TextConfig
from slowfast_trt.ops.cross_attention.custom_op import cross_attention

SLOW_KV_LAYOUT = "[batch, kv_heads, slow_tokens, head_dim]"


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


class DecoderLayer(Qwen2Layer):
    """A Qwen2 block; a hybrid one (``cross`` given) adds the gated cross-attention to the slow tokens."""

    def __init__(self, text: TextConfig, cross: CrossAttnConfig | None):
        super().__init__(text)
        self.cross = CrossAttnBranch(text, cross) if cross is not None else None

    @property
    def is_hybrid(self) -> bool:
        return self.cross is not None

    def slow_kv(self, slow_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slow K/V of this hybrid layer; depends only on the video, computed once per video."""
        assert self.cross is not None
        return self.cross.project_slow(self.input_layernorm(slow_tokens))

    def forward(self, x, cos, sin, past_key, past_value, slow=None, past_length=None, graph_bias=None):
        if self.cross is None or slow is None:
            return self.block(x, cos, sin, past_key, past_value, past_length, graph_bias=graph_bias)

        def mix(attn, q):
            return self._add_cross_attention(attn, q, *slow)

        return self.block(x, cos, sin, past_key, past_value, past_length, mix, graph_bias)

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
        bias = graph_attention_bias(x, past_keys[0], past_length) if torch.onnx.is_in_onnx_export() else None
        new_keys, new_values = [], []
        hybrid_index = {layer_id: j for j, layer_id in enumerate(self.hybrid_layer_ids)}
        for i, layer in enumerate(self.layers):
            slow = None
            if attend and layer.is_hybrid:
                j = hybrid_index[i]
                slow = (slow_keys[j], slow_values[j], slow_lengths, cross_rows, cross_row_offsets)
            x, k, v = layer(x, cos, sin, past_keys[i], past_values[i], slow, past_length, bias)
            new_keys.append(k)
            new_values.append(v)
        x = self.norm(x if all_logits else x[:, -1])
        return self.lm_head(x), new_keys, new_values
