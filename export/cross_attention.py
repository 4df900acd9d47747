"""Eager PyTorch semantics of the slow-token cross-attention op (``cross_attention_op.json``).

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
implement exactly this function; tests compare them with it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

SCHEMA_PATH = Path(__file__).with_name("cross_attention_op.json")


@lru_cache(maxsize=1)
def op_schema() -> dict:
    """The op contract shared by the exporter, the TensorRT glue, CMake and the tests."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


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
    offsets = [int(x) for x in row_offsets.tolist()]
    lengths = [int(x) for x in slow_lengths.tolist()]
    out = query.new_zeros(rows, num_heads, head_dim, dtype=compute)
    for b in range(batch):
        start, end, n = offsets[b], offsets[b + 1], lengths[b]
        if end <= start or n == 0:
            continue
        # (r, Hkv, G, D) against (Hkv, n, D): no repeat of K/V across the query heads of a group.
        q = query[start:end].to(compute).reshape(end - start, num_kv_heads, groups, head_dim)
        k = slow_key[b, :, :n].to(compute)
        v = slow_value[b, :, :n].to(compute)
        scores = torch.einsum("rkgd,knd->rkgn", q, k) * scale
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.einsum("rkgn,knd->rkgd", probs, v)
        out[start:end] = ctx.reshape(end - start, num_heads, head_dim)
    out = out.reshape(rows, num_heads * head_dim)
    if gate is not None:
        if residual is None:
            raise ValueError("cross_attention_eager: gate given without residual")
        return (residual.to(compute) + out * gate.to(compute)).to(query.dtype)
    return out.to(query.dtype)
