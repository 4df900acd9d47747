"""Eager PyTorch semantics of the slow-token cross-attention op (``contract.json``).

| tensor        | shape                                   | dtype            |
|---------------|-----------------------------------------|------------------|
| query         | (rows, num_heads, head_dim)             | T                |
| slow_key      | (batch, num_kv_heads, slow_tokens, dim) | T                |
| slow_value    | (batch, num_kv_heads, slow_tokens, dim) | T                |
| slow_lengths  | (batch,)                                | int32            |
| row_offsets   | (batch + 1,)                            | int32            |
| residual      | (rows, num_heads * head_dim), optional  | T                |
| gate          | (rows, 1), optional                     | T                |
| -> output     | (rows, num_heads * head_dim)            | T                |

Scores and softmax are computed in float32 (float64 stays float64) whatever T is, as the
CUDA kernels and upstream's flash-attention do. The ONNX translation and the CUDA kernels
implement exactly this function; tests compare them with it. Rows of no sequence (before
``row_offsets[0]`` or from ``row_offsets[batch]`` on) get ctx = 0, so the output is 0, or
``residual + gate * 0`` with the gate; nothing computed from their query reaches the output.

On CUDA with one sequence (the runtime's case) the lengths and offsets are applied as
device-side masks instead of being read on the host, so a decode step that calls this can
be captured in a CUDA graph (:mod:`slowfast_trt.runtime.decode_graph`); the general path
slices per sequence and reads them with ``tolist``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_attention_eager(
    query: torch.Tensor,
    slow_key: torch.Tensor,
    slow_value: torch.Tensor,
    slow_lengths: torch.Tensor,
    row_offsets: torch.Tensor,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Context of each query row over the valid slow tokens of its sequence (see module table)."""
    rows, num_heads, head_dim = query.shape
    batch, num_kv_heads, _, _ = slow_key.shape
    groups = num_heads // num_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    if batch == 1 and query.is_cuda:
        out = one_sequence_masked(query, slow_key, slow_value, slow_lengths, row_offsets, scale, compute)
        return _apply_gate(out, query, residual, gate, compute)
    offsets = [int(x) for x in row_offsets.tolist()]
    lengths = [int(x) for x in slow_lengths.tolist()]
    out = query.new_zeros(rows, num_heads, head_dim, dtype=compute)
    for b in range(batch):
        start, end, n = offsets[b], offsets[b + 1], lengths[b]
        if end <= start or n == 0:
            continue
        # A KV head's r*G query rows against its (n, D) keys, one fused SDPA call (scores never
        # materialised on CPU); no repeat of K/V across the query heads of a group.
        r = end - start
        q = query[start:end].to(compute).reshape(r, num_kv_heads, groups, head_dim).transpose(0, 1)
        k = slow_key[b, :, :n].to(compute)
        v = slow_value[b, :, :n].to(compute)
        ctx = F.scaled_dot_product_attention(q.reshape(num_kv_heads, r * groups, head_dim), k, v, scale=scale)
        out[start:end] = ctx.view(num_kv_heads, r, groups, head_dim).transpose(0, 1).reshape(r, num_heads, head_dim)
    return _apply_gate(out.reshape(rows, num_heads * head_dim), query, residual, gate, compute)


def _apply_gate(out, query, residual, gate, compute):
    if gate is not None:
        if residual is None:
            raise ValueError("cross_attention_eager: gate given without residual")
        return (residual.to(compute) + out * gate.to(compute)).to(query.dtype)
    return out.to(query.dtype)


def one_sequence_masked(query, slow_key, slow_value, slow_lengths, row_offsets, scale: float, compute) -> torch.Tensor:
    """The op's context for batch 1 without host reads: slow tokens at or beyond
    ``slow_lengths[0]`` and rows outside ``row_offsets[0] .. row_offsets[1]`` are masked on
    the device (length 0 gives 0, as the contract says). -> (rows, num_heads * head_dim), ``compute``."""
    rows, num_heads, head_dim = query.shape
    _, num_kv_heads, slow_tokens, _ = slow_key.shape
    q = query.to(compute).reshape(rows, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("rkgd,knd->rkgn", q, slow_key[0].to(compute)) * scale
    valid = torch.arange(slow_tokens, device=query.device) < slow_lengths[0]
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    probs = torch.where(valid.any(), probs, torch.zeros((), dtype=compute, device=query.device))  # n = 0: no NaN
    # Padded values are zeroed, not only given probability 0: 0 x NaN poison would be NaN.
    values = torch.where(valid[:, None], slow_value[0].to(compute), torch.zeros((), dtype=compute, device=query.device))
    ctx = torch.einsum("rkgn,knd->rkgd", probs, values).reshape(rows, num_heads * head_dim)
    row = torch.arange(rows, device=query.device)
    inside = (row >= row_offsets[0]) & (row < row_offsets[1])
    return torch.where(inside[:, None], ctx, torch.zeros((), dtype=compute, device=query.device))
