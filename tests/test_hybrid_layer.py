"""The hybrid layer's cross-attention, re-derived independently from FACTS.md / upstream's
``onlytext2media_cross_attn`` (rearrange '(H KV D)', repeat_kv, masked softmax, gate) in float64."""

import copy
import math

import pytest
import torch

from slowfast_trt.models.qwen2.layers import rope_cos_sin
from slowfast_trt.models.slowfast.sequence import attend_to_rows


def rms(x, w, eps):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, pos, theta):
    d = x.shape[-1]
    # upstream builds the angles and their cos/sin in float32 whatever the model dtype
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    ang = pos[:, None].float() * inv[None]
    cos, sin = torch.cos(torch.cat([ang, ang], -1)).double(), torch.sin(torch.cat([ang, ang], -1)).double()
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos[:, None] + rot * sin[:, None]


def upstream_layer(layer, cfg, x, slow, text_mask, has_video):
    """One hybrid layer on one sequence (L, hidden), no cache, in float64."""
    L, hidden = x.shape
    H, Hkv, D = cfg.text.num_heads, cfg.text.num_kv_heads, cfg.text.head_dim
    eps = cfg.text.rms_norm_eps
    P = {k: v.double() for k, v in layer.state_dict().items()}
    lin = lambda t, name, bias=True: t @ P[name + ".weight"].T + (P[name + ".bias"] if bias else 0)
    h = rms(x, P["input_layernorm.weight"], eps)
    pos = torch.arange(L)
    q = rope(lin(h, "q_proj").view(L, H, D), pos, cfg.text.rope_theta)
    k = rope(lin(h, "k_proj").view(L, Hkv, D), pos, cfg.text.rope_theta)
    v = lin(h, "v_proj").view(L, Hkv, D)
    rep = H // Hkv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # repeat_kv
    scores = torch.einsum("lhd,shd->hls", q, k) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(L, L).triu(1).bool(), float("-inf"))
    a = torch.einsum("hls,shd->lhd", scores.softmax(-1), v).reshape(L, H * D)
    # slow path: the same input_layernorm, Linear(hidden, 2*Hkv*D) viewed as (Hkv, KV, D)
    s = rms(slow, P["input_layernorm.weight"], eps)
    kv = lin(s, "cross.kv_proj").view(-1, Hkv, 2, D)
    K, V = kv[:, :, 0].repeat_interleave(rep, 1), kv[:, :, 1].repeat_interleave(rep, 1)
    ctx = torch.einsum("lhs,shd->lhd", (torch.einsum("lhd,shd->lhs", q, K) / math.sqrt(D)).softmax(-1), V).reshape(L, H * D)
    gate = torch.tanh(lin(a, "cross.gate_proj")) * torch.tanh(P["cross.warmup_gate"])
    a = a + float(has_video) * text_mask[:, None].double() * ctx * gate
    out = x + a @ P["o_proj.weight"].T
    m = rms(out, P["post_attention_layernorm.weight"], eps)
    mlp = (torch.nn.functional.silu(m @ P["mlp.gate_proj.weight"].T) * (m @ P["mlp.up_proj.weight"].T)) @ P["mlp.down_proj.weight"].T
    return out + mlp


def our_layer(layer, cfg, x, slow, attend):
    layer = copy.deepcopy(layer).double()
    L = x.shape[0]
    cos, sin = rope_cos_sin(torch.arange(L)[None], cfg.text.head_dim, cfg.text.rope_theta, torch.float64)
    empty = torch.zeros(1, 0, cfg.text.num_kv_heads, cfg.text.head_dim, dtype=torch.float64)
    k, v = layer.slow_kv(slow[None])
    rows, offsets = attend_to_rows(attend)
    lengths = torch.tensor([slow.shape[0]], dtype=torch.int32)
    out, _, _ = layer(x[None], cos, sin, empty, empty, (k, v, lengths, rows, offsets))
    return out[0]


@pytest.fixture
def hybrid(reference):
    model = reference.model
    return model.decoder.layers[model.decoder.hybrid_layer_ids[1]], model.config


def test_cross_attention_matches_independent_derivation(hybrid):
    layer, cfg = hybrid
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(23, 64, generator=gen, dtype=torch.float64)
    slow = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    text = torch.zeros(23, dtype=torch.bool)
    text[:5] = True
    text[15:] = True  # rows 5..14 play the fast visual tokens
    ours = our_layer(layer, cfg, x, slow, text)
    ref = upstream_layer(layer, cfg, x, slow, text, has_video=True)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    without = upstream_layer(layer, cfg, x, slow, text, has_video=False)
    assert (ref - without)[text].abs().max() > 1e-2  # the slow path matters ...
    torch.testing.assert_close(ref[~text][:1], without[~text][:1])  # ... and only on attending rows (before any text row)


def test_slow_kv_layout_is_hkv_kv_d(hybrid):
    layer, cfg = hybrid
    slow = torch.randn(1, 7, 64)
    k, v = layer.slow_kv(slow)
    kv = layer.cross.kv_proj(layer.input_layernorm(slow))  # feature ((kv_head*2 + {K:0,V:1})*D + d)
    D = cfg.text.head_dim
    for head in range(cfg.text.num_kv_heads):
        torch.testing.assert_close(k[0, head], kv[0, :, (head * 2) * D : (head * 2 + 1) * D])
        torch.testing.assert_close(v[0, head], kv[0, :, (head * 2 + 1) * D : (head * 2 + 2) * D])


def test_skipping_decode_cross_attention_equals_upstream_masked_term(reference):
    """Upstream computes the decode row's cross-attention and multiplies it by zero; we skip it."""
    model = copy.deepcopy(reference.model)
    gen = torch.Generator().manual_seed(5)
    slow_kv = model.compute_slow_kv(torch.randn(50, 64, generator=gen))
    cache = model.empty_cache()
    prompt = torch.randn(1, 9, 64, generator=gen)
    rows, offsets = attend_to_rows(torch.ones(9, dtype=torch.bool))
    kwargs = dict(slow_keys=list(slow_kv.keys), slow_values=list(slow_kv.values), slow_lengths=slow_kv.lengths)
    _, k, v = model.decoder(prompt, torch.arange(9)[None], *cache, cross_rows=rows, cross_row_offsets=offsets, **kwargs)
    step = torch.randn(1, 1, 64, generator=gen)
    pos = torch.tensor([[9]])
    skipped, _, _ = model.decoder(step, pos, k, v, **kwargs)  # no cross rows: skipped
    one_row = attend_to_rows(torch.ones(1, dtype=torch.bool))
    attended, _, _ = model.decoder(step, pos, k, v, cross_rows=one_row[0], cross_row_offsets=one_row[1], **kwargs)
    assert not torch.equal(skipped, attended)  # 'attend' decode mode changes the output
    for layer_id in model.decoder.hybrid_layer_ids:
        model.decoder.layers[layer_id].cross.warmup_gate.data.zero_()  # upstream's mask factor 0
    masked, _, _ = model.decoder(step, pos, k, v, cross_rows=one_row[0], cross_row_offsets=one_row[1], **kwargs)
    assert torch.equal(skipped, masked)  # bit-exact
