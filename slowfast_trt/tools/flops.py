"""FLOP counts of the vision tower and the prefill, and a measured GEMM peak: the floors benchmarks
print beside their times (floor = FLOPs / peak; multiply-adds count 2, norms and activations 0)."""

from __future__ import annotations

import time


def gemm_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Best float32 ``size``^3 matmul rate of this thread's torch settings (GFLOP/s, thread CPU time)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        torch.mm(a, b)
        best = min(best, time.thread_time() - start)
    return 2 * size**3 / max(best, 1e-9) / 1e9


def vision_flops(spec, frames: int, image_size: int) -> float:
    """ConvNeXt (``ConvNeXtSpec``) FLOPs for ``frames`` frames of ``image_size`` pixels square."""
    side = image_size // spec.patch_size
    total = 2 * side * side * spec.dims[0] * 3 * spec.patch_size**2  # stem
    in_dim = spec.dims[0]
    for stage, (dim, depth) in enumerate(zip(spec.dims, spec.depths)):
        if stage > 0:
            side //= 2
            total += 2 * side * side * dim * in_dim * 4  # 2x2 stride-2 downsample
        per_block = 2 * side * side * dim * (spec.kernel_size**2 + 2 * spec.mlp_ratio * dim)
        total += depth * per_block
        in_dim = dim
    return float(total * frames)


def prefill_flops(config, rows: int, slow_tokens: int, text_rows: int, lm_head_rows: int = 1) -> float:
    """Decoder FLOPs of a prefill of ``rows`` rows: projections and MLP of every layer, causal
    self-attention, the hybrid layers' cross-attention of ``text_rows`` rows over ``slow_tokens``
    and their slow K/V projection, and the LM head on ``lm_head_rows`` rows."""
    text = config.text
    hidden, heads, kv, dim = text.hidden_size, text.num_heads, text.num_kv_heads, text.head_dim
    per_row = 2 * (hidden * (heads * dim + 2 * kv * dim) + heads * dim * hidden + 3 * hidden * text.intermediate_size)
    attention = 2 * 2 * heads * dim * rows * (rows + 1) / 2
    layers = text.num_layers * (per_row * rows + attention)
    hybrid = len(config.cross_attn.hybrid_layers)
    cross = hybrid * (2 * 2 * heads * dim * text_rows * slow_tokens + 2 * slow_tokens * hidden * 2 * kv * dim)
    return float(layers + cross + 2 * hidden * text.vocab_size * lm_head_rows)
