"""GPU checks of the slowFastCrossAttn CUDA kernels against the float64 PyTorch reference.

Every case poisons the output (NaN) and the K/V padding past each sequence's slow_lengths (NaN), runs
the kernel, and requires cosine >= 0.9999 and max error <= 2 x (same-precision PyTorch error) + atol.
Skipped at collection without CUDA (tests/conftest.py); nothing here touches CUDA at import.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.ops.cross_attention import kernel as kernels
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager

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
    exact = cross_attention_eager(**{k: v.double() if v.is_floating_point() else v for k, v in t.items()},
                                  scale=attrs["scale"])
    same = cross_attention_eager(**t, scale=attrs["scale"]).double()  # fp32 accumulation, as the kernels
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


# ---- NaN propagation, empty sequences and rows outside every sequence (issue 14) ----------------------


def _run(t, attrs, dtype, backend="auto", num_splits=0):
    out = torch.full((t["query"].shape[0], attrs["num_heads"] * t["query"].shape[2]), float("nan"),
                     dtype=dtype, device="cuda")
    kernels.cross_attention(**t, **attrs, out=out, backend=backend, num_splits=num_splits)
    torch.cuda.synchronize()
    return out


def _check_nan_pattern(out, t, attrs, dtype):
    """The kernel has NaN exactly where the float64 reference has; the rest meets the usual tolerance."""
    exact = cross_attention_eager(**{k: v.double() if v.is_floating_point() else v for k, v in t.items()},
                                  scale=attrs["scale"])
    same = cross_attention_eager(**t, scale=attrs["scale"]).double()  # fp32 accumulation, as the kernels
    nan = exact.isnan()
    assert nan.any(), "the case must poison something that the reference propagates"
    assert torch.equal(out.isnan(), nan), f"NaN at {out.isnan().sum()} elements, reference {nan.sum()}"
    keep = ~nan
    torch_err = (same[keep] - exact[keep]).abs().max().item()
    err = (out.double()[keep] - exact[keep]).abs().max().item()
    assert torch.isfinite(out[keep]).all()
    assert err <= 2 * torch_err + ATOL[dtype], f"max error {err:.3e}, same-precision torch {torch_err:.3e}"
    return nan


@pytest.mark.parametrize("num_splits", [1, 5])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("dtype, backend", BACKENDS, ids=lambda v: str(v).replace("torch.", ""))
def test_nan_in_a_query_row_gives_nan_for_that_row_and_head(dtype, backend, fuse, num_splits):
    t, attrs = _make_case((28, 4, 128, [1296, 81], [2, 3], 1296, fuse), dtype, seed=7)
    t["query"][3, 9, 17] = float("nan")  # sequence 1, head 9 (kv head 1)
    out = _run(t, attrs, dtype, backend, num_splits)
    nan = _check_nan_pattern(out, t, attrs, dtype)
    expected = torch.zeros_like(nan)
    expected[3, 9 * 128:10 * 128] = True
    assert torch.equal(nan, expected)


@pytest.mark.parametrize("num_splits", [0, 1, 5])
@pytest.mark.parametrize("dtype, backend", BACKENDS, ids=lambda v: str(v).replace("torch.", ""))
def test_nan_in_one_key_of_a_long_split_chunk_is_not_dropped(dtype, backend, num_splits):
    t, attrs = _make_case(CASES["decode-7b-64f"], dtype, seed=8)
    t["slow_key"][0, 2, 3001, 5] = float("nan")  # one key of kv head 2, deep inside a chunk
    t["slow_value"][0, 1, 4000, 77] = float("nan")  # one value element of kv head 1
    out = _run(t, attrs, dtype, backend, num_splits)
    nan = _check_nan_pattern(out, t, attrs, dtype)
    expected = torch.zeros_like(nan)
    expected[0, 14 * 128:21 * 128] = True  # every head of kv group 2
    expected[0, [h * 128 + 77 for h in range(7, 14)]] = True  # element 77 of every head of group 1
    assert torch.equal(nan, expected)


@pytest.mark.parametrize("num_splits", [0, 1, 5])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("dtype, backend", BACKENDS, ids=lambda v: str(v).replace("torch.", ""))
def test_no_slow_token_gives_exactly_zero_context(dtype, backend, fuse, num_splits):
    t, attrs = _make_case((28, 4, 128, [0, 700], [3, 2], 1024, fuse), dtype, seed=9)
    t["query"][:3] = float("nan")  # rows of the empty sequence: still no key, so ctx is exactly 0
    out = _run(t, attrs, dtype, backend, num_splits)
    if fuse:
        assert torch.equal(out[:3], t["residual"][:3])  # residual + gate * 0
    else:
        assert (out[:3] == 0).all()
    t["query"][:3] = 0.0
    _check(out, t, attrs, dtype)


@pytest.mark.parametrize("offsets, rows", [([2, 5, 7], 10), ([0, 1, 1], 300), ([3, 3, 3], 5)],
                         ids=["both-ends", "long-tail", "no-row-covered"])
@pytest.mark.parametrize("num_splits", [0, 1, 5])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("dtype, backend", BACKENDS, ids=lambda v: str(v).replace("torch.", ""))
def test_rows_outside_the_offsets_get_zero_context(dtype, backend, fuse, num_splits, offsets, rows):
    t, attrs = _make_case((28, 4, 128, [900, 77], [rows, 0], 1024, fuse), dtype, seed=10)
    t["row_offsets"] = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    out = _run(t, attrs, dtype, backend, num_splits)
    outside = torch.ones(rows, dtype=torch.bool, device="cuda")
    outside[offsets[0]:offsets[-1]] = False
    if fuse:
        assert torch.equal(out[outside], t["residual"][outside])
    else:
        assert (out[outside] == 0).all()
    _check(out, t, attrs, dtype)


def test_decode_at_batch_one_launches_no_idle_tile_slot():
    import slowfast_trt._kernels as ext

    plan = ext.plan("float16", 1, 1, 28, 4, 128, 5184, 132)
    assert plan["tile_slots"] == 1  # 1 row x 7 heads fill one 16-vector tile
    assert ext.plan("float16", 24, 24, 28, 4, 128, 1296, 132)["tile_slots"] == 24  # batched decode: exact


@pytest.mark.parametrize("num_splits", [0, 1])
def test_launch_is_captured_in_a_cuda_graph(num_splits):
    t, attrs = _make_case(CASES["decode-7b-96f-ragged-zero"], torch.float16, seed=11)
    out = torch.full((3, 28 * 128), float("nan"), dtype=torch.float16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # no sync and no allocation by the launcher inside the capture
        kernels.cross_attention(**t, **attrs, out=out, num_splits=num_splits)
    graph.replay()
    torch.cuda.synchronize()
    _check(out, t, attrs, torch.float16)
