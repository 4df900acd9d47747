"""The self-attention forms of ``models/qwen2/layers.py``: eager prefill (SDPA), eager decode step
(two blocks) and the exported chain agree with a float64 reference, and the exported half graph
keeps Q/K/V and the cache in half precision (no float32 copy of the past K/V; softmax in float32).
"""

from __future__ import annotations

from collections import deque

import onnx
import pytest
import torch

from slowfast_trt.export.subgraphs import export_decoder
from slowfast_trt.models.qwen2.layers import attention_graph, causal_attention
from slowfast_trt.models.slowfast.reference import ReferenceGenerator

# (new rows L, past rows P, past_length): prefill, follow-up prefill, static past with rows
# beyond past_length, decode steps dynamic and static, empty past with past_length 0.
CASES = [(7, 0, None), (7, 0, 0), (4, 3, 3), (4, 9, 3), (1, 0, None), (1, 9, 4), (1, 9, None), (6, 2, None)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-3}


def _reference(q, past_k, past_v, k, v, past_length):
    """Plain float64 attention with K/V repeated over each group's query heads."""
    _, length, heads, dim = q.shape
    past, groups = past_k.shape[1], heads // k.shape[2]
    keys = torch.cat((past_k, k), 1).double().repeat_interleave(groups, 2).transpose(1, 2)
    values = torch.cat((past_v, v), 1).double().repeat_interleave(groups, 2).transpose(1, 2)
    scores = q.double().transpose(1, 2) @ keys.transpose(-1, -2) * dim**-0.5
    limit = past if past_length is None else int(past_length)
    visible = torch.cat((torch.arange(past)[None, :].expand(length, past) < limit,
                         torch.ones(length, length, dtype=torch.bool).tril()), 1)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (probs @ values).transpose(1, 2).reshape(1, length, heads * dim)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("length,past,past_length", CASES)
def test_eager_and_graph_forms_match_float64(dtype, length, past, past_length):
    gen = torch.Generator().manual_seed(length * 31 + past)
    q, k, v = (torch.randn(1, length, h, 16, generator=gen).to(dtype) for h in (6, 2, 2))
    past_k, past_v = (torch.randn(1, past, 2, 16, generator=gen).to(dtype) for _ in range(2))
    if past_length is not None and past:
        past_k[:, past_length:] = 1e3  # rows beyond past_length are finite junk: must not count
        past_v[:, past_length:] = -1e3
    limit = None if past_length is None else torch.tensor([past_length])
    want = _reference(q, past_k, past_v, k, v, limit)
    for form in (causal_attention, attention_graph):
        got = form(q, past_k, past_v, k, v, limit)
        assert got.dtype == dtype and got.shape == want.shape
        err = (got.double() - want).abs().max().item()
        assert err <= TOLERANCE[dtype] * max(1.0, want.abs().max().item()), f"{form.__name__}: {err:.3g}"


def _data_movement_of(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Tensors computed from ``names`` by data movement only (no arithmetic, no Cast)."""
    moving = {"Concat", "Transpose", "Reshape", "Identity", "Slice", "Unsqueeze", "Squeeze", "Expand", "Gather"}
    derived, todo = set(names), deque(names)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    while todo:
        for node in consumers.get(todo.popleft(), []):
            if node.op_type in moving and node.input[0] in derived:
                for out in node.output:
                    if out not in derived:
                        derived.add(out)
                        todo.append(out)
    return derived


def test_half_decoder_graph_keeps_the_cache_in_half(tiny_ckpt, tmp_path):
    model = ReferenceGenerator.load(tiny_ckpt, dtype="float16").model
    spec = export_decoder(model, tmp_path, "float16", 16, 64)
    graph = onnx.load(str(tmp_path / spec.file), load_external_data=False).graph
    past = {i.name for i in graph.input if i.name.startswith(("past_key_", "past_value_"))}
    assert len(past) == 2 * model.config.text.num_layers
    cache = _data_movement_of(graph, past)
    casts = [n for n in graph.node if n.op_type == "Cast" and set(n.input) & cache]
    assert not casts, f"the past K/V are cast: {[n.name for n in casts]}"
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and set(n.input) & cache]
    assert len(matmuls) == 2 * model.config.text.num_layers  # Q.K^T and P.V read the half cache
    # Softmax runs in float32: its input comes straight from a Cast to float.
    producer = {out: n for n in graph.node for out in n.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == model.config.text.num_layers
    for node in softmaxes:
        cast = producer[node.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT, node.name
