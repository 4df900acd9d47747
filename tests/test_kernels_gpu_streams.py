"""The kernel wrapper on a side stream, on a GPU (skipped at collection without CUDA).

A block freed on the current stream while a kernel queued there still writes it goes back to
the current stream's pool at once (the caching allocator relies on stream order). Before the
fix, ``cross_attention(..., stream=side)`` allocated ``out`` from that pool and wrote it on
``side``, where nothing waits for the queued write: the NaN fill below landed on the result.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.ops.cross_attention import kernel as kernels
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager

pytestmark = pytest.mark.gpu
HEADS, KV_HEADS, DIM, ROWS, SLOW = 28, 4, 128, 64, 2000


def _inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)
    args = dict(
        query=torch.randn(ROWS, HEADS, DIM, device="cuda", dtype=torch.float16, generator=gen),
        slow_key=torch.randn(1, KV_HEADS, SLOW, DIM, device="cuda", dtype=torch.float16, generator=gen),
        slow_value=torch.randn(1, KV_HEADS, SLOW, DIM, device="cuda", dtype=torch.float16, generator=gen),
        slow_lengths=torch.tensor([SLOW], dtype=torch.int32, device="cuda"),
        row_offsets=torch.tensor([0, ROWS], dtype=torch.int32, device="cuda"),
    )
    return args


@pytest.mark.parametrize("as_handle", [False, True])
def test_out_on_a_side_stream_is_not_a_block_still_written_on_the_current_stream(as_handle):
    if not kernels.is_available():
        pytest.skip(f"slowfast_trt._kernels not built: {kernels.build_info()}")
    inputs = _inputs()
    want = cross_attention_eager(*inputs.values()).float()
    side = torch.cuda.Stream()
    torch.cuda.synchronize()  # inputs ready for the side stream
    busy = torch.empty(ROWS, HEADS * DIM, dtype=torch.float16, device="cuda")  # out's size exactly
    busy_ptr = busy.data_ptr()
    torch.cuda._sleep(100_000_000)  # keeps the current stream busy for tens of ms
    busy.fill_(float("nan"))  # queued behind the sleep
    del busy  # back to the current stream's pool while the fill is still queued
    out = kernels.cross_attention(**inputs, num_heads=HEADS, num_kv_heads=KV_HEADS, scale=DIM**-0.5,
                                  stream=side.cuda_stream if as_handle else side)
    side.synchronize()
    torch.cuda.synchronize()
    assert out.data_ptr() != busy_ptr, "out reused a block the current stream was still writing"
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-3)


def test_without_stream_the_launch_runs_on_the_current_stream():
    if not kernels.is_available():
        pytest.skip(f"slowfast_trt._kernels not built: {kernels.build_info()}")
    inputs = _inputs()
    want = cross_attention_eager(*inputs.values()).float()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the current stream is now `side`: no stream= needed
        out = kernels.cross_attention(**inputs, num_heads=HEADS, num_kv_heads=KV_HEADS, scale=DIM**-0.5)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-3)
