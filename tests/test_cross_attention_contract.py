"""The eager op (the one PyTorch statement of the contract) keeps the contract's signature.

Its numbers are checked against an independent per-row derivation in ``test_kernels_cpu.py``."""


from slowfast_trt.ops.cross_attention.eager import cross_attention_eager
from slowfast_trt.ops.cross_attention.contract import op_schema


def test_schema_inputs_match_eager_signature():
    names = [spec["name"] for spec in op_schema()["inputs"]]
    assert names == ["query", "slow_key", "slow_value", "slow_lengths", "row_offsets", "residual", "gate"]
    params = list(cross_attention_eager.__code__.co_varnames[: len(names)])
    assert params == names


def test_one_sequence_masked_never_reads_padding():
    """The device-masked batch-1 path (used on CUDA) equals the sliced path with NaN past every
    valid slow token and outside the rows, and gives exactly 0 for no slow token."""
    import torch

    from slowfast_trt.ops.cross_attention.eager import one_sequence_masked

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(5, 6, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 12, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 12, 16, generator=gen, dtype=torch.float64)
    k[:, :, 9:] = v[:, :, 9:] = float("nan")
    q[4] = float("nan")  # outside the rows 0..3: never read
    offsets = torch.tensor([0, 4], dtype=torch.int32)
    got = one_sequence_masked(q, k, v, torch.tensor([9], dtype=torch.int32), offsets, 0.25, torch.float64)
    want = cross_attention_eager(q, k, v, torch.tensor([9], dtype=torch.int32), offsets, scale=0.25)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.isnan(got).any()
    empty = one_sequence_masked(q[:4], k, v, torch.tensor([0], dtype=torch.int32), offsets, 0.25, torch.float64)
    assert torch.equal(empty, torch.zeros_like(empty))
