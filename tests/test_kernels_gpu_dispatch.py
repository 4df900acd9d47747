"""On CUDA the torch custom op (and so the torch backend) runs the compiled kernel (GPU only).

The op must pick the kernel for CUDA tensors it supports and give eager's result (fp32 within
float rounding, fp16/bf16 within their precision); the torch backend on a model whose head dim
the kernel has (64) must call it in prefill and in captured decode steps, and its CUDA-graph
decode must generate the tokens of its dynamic decode.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.ops.cross_attention import custom_op, kernel
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def built():
    if not kernel.is_available():
        pytest.skip(f"slowfast_trt._kernels not built: {kernel.build_info()}")


@pytest.fixture()
def kernel_calls(monkeypatch):
    calls = []
    original = kernel.cross_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernel, "cross_attention", spy)
    return calls


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows,offsets,length", [(1, (0, 1), 5184), (37, (0, 37), 1296), (9, (2, 7), 300), (4, (0, 4), 0)])
def test_the_op_picks_the_kernel_on_cuda_and_matches_eager(kernel_calls, dtype, tol, rows, offsets, length):
    gen = torch.Generator(device="cuda").manual_seed(rows)
    slow = max(length, 8)
    q = torch.randn(rows, 28, 128, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(1, 4, slow, 128, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(1, 4, slow, 128, device="cuda", dtype=dtype, generator=gen)
    lengths = torch.tensor([length], dtype=torch.int32, device="cuda")
    row_offsets = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    residual = torch.randn(rows, 28 * 128, device="cuda", dtype=dtype, generator=gen)
    gate = torch.randn(rows, 1, device="cuda", dtype=dtype, generator=gen)
    assert custom_op.implementation(q, k, v, residual, gate) == "kernel"
    got = torch.ops.slowfast_trt.cross_attention(q, k, v, lengths, row_offsets, residual, gate)
    assert kernel_calls == [q.shape]
    want = cross_attention_eager(*(t.double() if t.is_floating_point() else t
                                   for t in (q, k, v, lengths, row_offsets, residual, gate)))
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 4)


def test_the_torch_backend_runs_the_kernel_in_prefill_and_in_captured_decode_steps(tmp_path, kernel_calls, monkeypatch):
    from slowfast_trt.fixtures.sample_video import write_sample_video
    from slowfast_trt.fixtures.tiny_checkpoint import TinySpec, write_tiny_checkpoint
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
    from slowfast_trt.video import load_video

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", TinySpec(hidden=256, heads=4, kv_heads=2, intermediate=256))
    frames = load_video(write_sample_video(tmp_path / "clip.mp4", num_frames=16), 16).frames
    tokens = {}
    for steps in ("dynamic", "cuda-graph"):
        rt = SlowFastRuntime.load(ckpt, backend="torch", device="cuda", max_seq_len=1024, decode_steps=steps)
        with rt.open_video(frames, decode_mode="attend") as session:  # decode rows cross-attend too
            session.ignore_stop_tokens = True
            before = len(kernel_calls)
            tokens[steps] = session.ask("What is happening in this video?", max_new_tokens=8).token_ids
            assert len(kernel_calls) - before >= 4, f"{steps}: the kernel ran {len(kernel_calls) - before} times"
        rt.close()
    assert tokens["cuda-graph"] == tokens["dynamic"]
    # The same prefill through the eager op: logits agree (fp32) with the kernel's.
    rt = SlowFastRuntime.load(ckpt, backend="torch", device="cuda", max_seq_len=1024, decode_steps="dynamic")
    with rt.open_video(frames, decode_mode="attend") as session:
        with_kernel = session.ask("What is happening in this video?", max_new_tokens=1, temperature=0).token_ids
    monkeypatch.setattr(custom_op, "implementation", lambda *args: "eager")
    with rt.open_video(frames, decode_mode="attend") as session:
        eager = session.ask("What is happening in this video?", max_new_tokens=1, temperature=0).token_ids
    assert with_kernel == eager
