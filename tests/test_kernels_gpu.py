"""GPU checks of the slowFastCrossAttn CUDA kernels against the float64 PyTorch reference.

Every case poisons the output (NaN) and the K/V padding past each sequence's slow_lengths (NaN), runs
the kernel, and requires cosine >= 0.9999 and max error <= 2 x (same-precision PyTorch error) + atol.
Skipped at collection without CUDA (tests/conftest.py); nothing here touches CUDA at import.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt import kernels

pytestmark = pytest.mark.gpu

ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}

# id: (num_heads, num_kv_heads, head_dim, slow_lengths, rows per sequence, slow_tokens, fused gate)
CASES = {
    "decode-7b-64f": (28, 4, 128, [5184], [1], 5184, False),
    "decode-7b-96f-ragged-zero": (28, 4, 128, [7776, 1296, 0], [1, 1, 1], 7776, True),
    "decode-7b-max-frames": (28, 4, 128, [10368], [1], 10368, False),
    "decode-7b-two-rows": (28, 4, 128, [5184, 81], [2, 2], 5184, False),
    "prefill-7b": (28, 4, 128, [5184, 2592], [37, 150], 5184, True),
    "prefill-7b-short-video": (28, 4, 128, [1296], [200], 1296, False),
    "mha-d64-odd-lengths": (8, 8, 64, [1, 63, 65, 129], [3, 0, 5, 1], 200, False),
    "mqa-d64": (4, 1, 64, [1000], [33], 1024, True),
    "gqa-d128-few-keys": (14, 2, 128, [1, 2], [2, 17], 3, False),
    "batched-decode": (28, 4, 128, [81 * (1 + i % 16) for i in range(24)], [1] * 24, 1296, True),
}
BACKENDS = [
    (torch.float32, "simt"),
    (torch.float16, "mma"),
    (torch.float16, "simt"),
    (torch.bfloat16, "mma"),
    (torch.bfloat16, "simt"),
]


def _make_case(case, dtype, seed=0):
    heads, kv_heads, head_dim, lengths, row_counts, slow_tokens, fuse = case
    gen = torch.Generator(device="cuda").manual_seed(seed)
    batch, rows = len(lengths), sum(row_counts)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)

    t = {
        "query": randn(rows, heads, head_dim),
        "slow_key": randn(batch, kv_heads, slow_tokens, head_dim),
        "slow_value": randn(batch, kv_heads, slow_tokens, head_dim),
        "slow_lengths": torch.tensor(lengths, dtype=torch.int32, device="cuda"),
        "row_offsets": torch.tensor([0] + torch.tensor(row_counts).cumsum(0).tolist(), dtype=torch.int32,
                                    device="cuda"),
    }
    for b, n in enumerate(lengths):  # never read
        t["slow_key"][b, :, n:] = float("nan")
        t["slow_value"][b, :, n:] = float("nan")
    if fuse:
        t["residual"] = randn(rows, heads * head_dim)
        t["gate"] = randn(rows, 1)
    return t, dict(num_heads=heads, num_kv_heads=kv_heads, scale=head_dim**-0.5)


def _check(out, t, attrs, dtype):
    exact = kernels.reference_cross_attention(**t, scale=attrs["scale"])
    same = kernels.reference_cross_attention(**t, scale=attrs["scale"], compute_dtype=dtype).double()
    torch_err = (same - exact).abs().max().item()
    assert torch.isfinite(out).all(), "NaN/inf in the output (poison not overwritten or padding read)"
    err = (out.double() - exact).abs().max().item()
    if exact.norm() > 0:
        cos = torch.nn.functional.cosine_similarity(out.double().flatten(), exact.flatten(), dim=0).item()
        assert cos >= 0.9999, f"cosine {cos}"
    assert err <= 2 * torch_err + ATOL[dtype], f"max error {err:.3e}, same-precision torch {torch_err:.3e}"


@pytest.mark.parametrize("num_splits", [0, 1, 5])
@pytest.mark.parametrize("dtype, backend", BACKENDS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_float64_reference(name, dtype, backend, num_splits):
    t, attrs = _make_case(CASES[name], dtype)
    out = torch.full((t["query"].shape[0], attrs["num_heads"] * t["query"].shape[2]), float("nan"),
                     dtype=dtype, device="cuda")
    kernels.cross_attention(**t, **attrs, out=out, backend=backend, num_splits=num_splits)
    torch.cuda.synchronize()
    _check(out, t, attrs, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_writes_only_its_output_and_is_deterministic(dtype):
    t, attrs = _make_case(CASES["prefill-7b"], dtype, seed=3)
    rows, width = t["query"].shape[0], attrs["num_heads"] * t["query"].shape[2]
    guard = 64  # elements; keeps the view 16-byte aligned
    buffer = torch.full((rows * width + 2 * guard,), 12345.0, dtype=dtype, device="cuda")
    out = buffer[guard:guard + rows * width].view(rows, width)
    kernels.cross_attention(**t, **attrs, out=out)
    first = out.clone()
    kernels.cross_attention(**t, **attrs, out=out)
    torch.cuda.synchronize()
    assert (buffer[:guard] == 12345.0).all() and (buffer[-guard:] == 12345.0).all()
    assert torch.equal(first, out)
    _check(out, t, attrs, dtype)


def test_side_stream_and_allocated_output():
    t, attrs = _make_case(CASES["decode-7b-96f-ragged-zero"], torch.float16, seed=5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = kernels.cross_attention(**t, **attrs)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert out.shape == (3, 28 * 128) and out.dtype == torch.float16
    _check(out, t, attrs, torch.float16)


def test_zero_rows_and_zero_scale():
    t, attrs = _make_case((4, 2, 64, [10], [0], 16, False), torch.float16)
    assert kernels.cross_attention(**t, **attrs).shape == (0, 256)
    t, attrs = _make_case((4, 2, 64, [10], [3], 16, True), torch.float16)
    attrs["scale"] = 0.0  # uniform attention
    out = kernels.cross_attention(**t, **attrs)
    torch.cuda.synchronize()
    _check(out, t, attrs, torch.float16)


def test_plan_used_by_the_wrapper_matches_the_device():
    import slowfast_trt._kernels as ext

    props = torch.cuda.get_device_properties(0)
    plan = ext.plan("float16", 1, 1, 28, 4, 128, 5184, props.multi_processor_count)
    assert plan["num_splits"] > 1  # decode is split across the SMs
    assert ext.device_count() == torch.cuda.device_count()
