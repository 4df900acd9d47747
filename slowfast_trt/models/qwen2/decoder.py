"""A plain Qwen2 decoder (no cross-attention) on the shared layers: what LongVU runs, and any
family whose language model is a stock ``Qwen2ForCausalLM``.

Forward (batch B, L new rows, P cached rows):

| input / output   | shape                        | dtype | meaning                                    |
|------------------|------------------------------|-------|--------------------------------------------|
| inputs_embeds    | (B, L, hidden)               | T     | the rows to run (text and visual)          |
| position_ids     | (B, L)                       | int64 | absolute positions (P .. P+L-1)            |
| past_keys[i]     | (B, P, kv_heads, head_dim)   | T     | KV cache of layer i (``KV_CACHE_LAYOUT``)  |
| past_values[i]   | (B, P, kv_heads, head_dim)   | T     |                                            |
| past_length      | (1,)                         | int64 | valid past rows (see ``qwen2.layers``)     |
| -> logits        | (B, vocab) or (B, L, vocab)  | T     | last position, or all with ``all_logits``  |
| -> new_keys[i]   | (B, L, kv_heads, head_dim)   | T     | rows to append to the KV cache             |
| -> new_values[i] | (B, L, kv_heads, head_dim)   | T     |                                            |

Parameter names (``layers.{i}.q_proj``, ``layers.{i}.mlp.gate_proj``, ``norm``, ``lm_head``)
are those of the Slow-Fast decoder's non-hybrid layers, so the exported graph of this module
has the tensors of ``decoder_nocross`` (same names, same layouts).
"""

from __future__ import annotations

import torch
from torch import nn

from slowfast_trt.models.qwen2.config import TextConfig
from slowfast_trt.models.qwen2.layers import RMSNorm, Qwen2Layer, graph_attention_bias, rope_cos_sin

__all__ = ["Qwen2Decoder"]


class Qwen2Decoder(nn.Module):
    """Qwen2 layers, final RMSNorm and LM head over ``vocab_rows`` rows (see the module table)."""

    def __init__(self, text: TextConfig, vocab_rows: int | None = None):
        super().__init__()
        self.text = text
        self.layers = nn.ModuleList(Qwen2Layer(text) for _ in range(text.num_layers))
        self.norm = RMSNorm(text.hidden_size, text.rms_norm_eps)
        self.lm_head = nn.Linear(text.hidden_size, vocab_rows or text.vocab_size, bias=False)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        past_keys: list[torch.Tensor],
        past_values: list[torch.Tensor],
        past_length: torch.Tensor | None = None,
        all_logits: bool = False,
    ):
        cos, sin = rope_cos_sin(position_ids, self.text.head_dim, self.text.rope_theta, inputs_embeds.dtype)
        x = inputs_embeds
        bias = graph_attention_bias(x, past_keys[0], past_length) if torch.onnx.is_in_onnx_export() else None
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, past_keys[i], past_values[i], past_length, bias)
            new_keys.append(k)
            new_values.append(v)
        x = self.norm(x if all_logits else x[:, -1])
        return self.lm_head(x), new_keys, new_values

    def empty_cache(self, batch: int = 1, device=None, dtype=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """An empty KV cache (length 0) for every layer."""
        text = self.text
        weight = self.lm_head.weight
        shape = (batch, 0, text.num_kv_heads, text.head_dim)
        make = lambda: torch.zeros(shape, dtype=dtype or weight.dtype, device=device or weight.device)  # noqa: E731
        return [make() for _ in range(text.num_layers)], [make() for _ in range(text.num_layers)]
