"""The eager op (the one PyTorch statement of the contract) keeps the contract's signature.

Its numbers are checked against an independent per-row derivation in ``test_kernels_cpu.py``."""


from slowfast_trt.ops.cross_attention.eager import cross_attention_eager
from slowfast_trt.ops.cross_attention.contract import op_schema


def test_schema_inputs_match_eager_signature():
    names = [spec["name"] for spec in op_schema()["inputs"]]
    assert names == ["query", "slow_key", "slow_value", "slow_lengths", "row_offsets", "residual", "gate"]
    params = list(cross_attention_eager.__code__.co_varnames[: len(names)])
    assert params == names
