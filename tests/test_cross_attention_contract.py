"""The op's two independent PyTorch statements agree: the eager op the model and exporter use
(``export/cross_attention.py``) and the kernel tests' float64 reference (``kernels.py``)."""

import pytest
import torch

from slowfast_trt.export.cross_attention import cross_attention_eager, op_schema
from slowfast_trt.kernels import reference_cross_attention


@pytest.mark.parametrize("fuse_gate", [False, True])
@pytest.mark.parametrize("lengths, rows", [((13,), (5,)), ((9, 0, 17), (3, 2, 1)), ((6, 11), (0, 4))])
def test_eager_op_equals_kernel_reference(lengths, rows, fuse_gate):
    gen = torch.Generator().manual_seed(sum(lengths) + sum(rows))
    heads, kv_heads, dim, slots = 6, 2, 16, max(lengths) + 3
    total = sum(rows)
    q = torch.randn(total, heads, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(len(lengths), kv_heads, slots, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(len(lengths), kv_heads, slots, dim, generator=gen, dtype=torch.float64)
    k[:, :, max(lengths):] = float("nan")  # padding past every valid length must never be read
    v[:, :, max(lengths):] = float("nan")
    lens = torch.tensor(lengths, dtype=torch.int32)
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor(rows), 0).tolist()], dtype=torch.int32)
    extra = {}
    if fuse_gate:
        extra = dict(residual=torch.randn(total, heads * dim, generator=gen, dtype=torch.float64),
                     gate=torch.randn(total, 1, generator=gen, dtype=torch.float64))
    ours = cross_attention_eager(q, k, v, lens, offsets, scale=0.3, **extra)
    ref = reference_cross_attention(q, k, v, lens, offsets, scale=0.3, **extra)
    assert not torch.isnan(ours).any()
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-12, atol=1e-12)


def test_schema_inputs_match_eager_signature():
    names = [spec["name"] for spec in op_schema()["inputs"]]
    assert names == ["query", "slow_key", "slow_value", "slow_lengths", "row_offsets", "residual", "gate"]
    params = list(cross_attention_eager.__code__.co_varnames[: len(names)])
    assert params == names
