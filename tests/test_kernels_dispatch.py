"""Which implementation the torch custom op runs: the CUDA kernel on CUDA, eager elsewhere (CPU).

The torch backend calls ``torch.ops.slowfast_trt.cross_attention`` (the decoder's hybrid layers);
on CUDA it must run the compiled kernel, the TensorRT plugin's code. Here (no GPU) the decision is
checked on stand-in tensors and the CPU path is checked never to touch the kernel; the GPU side
(it picks the kernel and matches eager) is tests/test_kernels_gpu_dispatch.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from slowfast_trt.ops.cross_attention import custom_op, kernel
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager


def _cuda_like(shape, dtype=torch.float16):
    """What implementation() looks at of a CUDA tensor (none can be made without a GPU)."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, shape=tuple(shape), dim=lambda: len(shape))


def test_cpu_tensors_run_eager_and_never_touch_the_kernel(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CUDA kernel was called for CPU tensors")

    monkeypatch.setattr(kernel, "cross_attention", refuse)
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 4, 64, generator=gen), torch.randn(1, 2, 5, 64, generator=gen), torch.randn(1, 2, 5, 64, generator=gen)
    lengths, offsets = torch.tensor([4], dtype=torch.int32), torch.tensor([0, 3], dtype=torch.int32)
    residual, gate = torch.randn(3, 256, generator=gen), torch.randn(3, 1, generator=gen)
    assert custom_op.implementation(q, k, v, residual, gate) == "eager"
    got = torch.ops.slowfast_trt.cross_attention(q, k, v, lengths, offsets, residual, gate)
    torch.testing.assert_close(got, cross_attention_eager(q, k, v, lengths, offsets, residual, gate), rtol=0, atol=0)


F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


@pytest.mark.parametrize(
    "query, dtype, key_dtype, fused, built, want",
    [
        ((3, 28, 128), F16, F16, True, True, "kernel"),
        ((1, 28, 128), BF16, BF16, True, True, "kernel"),
        ((3, 8, 64), F32, F32, False, True, "kernel"),
        ((3, 4, 16), F32, F32, True, True, "eager"),  # the tiny test models' head dim: not compiled
        ((3, 28, 128), F16, F32, True, True, "eager"),  # query float16, keys float32
        ((0, 28, 128), F16, F16, True, True, "eager"),  # no attending row: nothing to launch
        ((3, 28, 128), F16, F16, True, False, "eager"),  # extension not built
    ],
)
def test_cuda_tensors_pick_the_kernel_where_it_applies(monkeypatch, query, dtype, key_dtype, fused, built, want):
    monkeypatch.setattr(kernel, "is_available", lambda: built)
    rows, heads, dim = query
    key = _cuda_like((1, 4, 10, dim), key_dtype)
    extra = (_cuda_like((rows, heads * dim), dtype), _cuda_like((rows, 1), dtype)) if fused else ()
    assert custom_op.implementation(_cuda_like(query, dtype), key, key, *extra) == want


def test_float64_runs_eager(monkeypatch):
    monkeypatch.setattr(kernel, "is_available", lambda: True)
    q = _cuda_like((2, 4, 64), torch.float64)
    assert custom_op.implementation(q, _cuda_like((1, 2, 3, 64), torch.float64), _cuda_like((1, 2, 3, 64), torch.float64)) == "eager"
