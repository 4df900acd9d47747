"""Rows of no sequence (outside ``[row_offsets[0], row_offsets[batch])``): one behaviour everywhere.

The contract says they get ctx = 0 (output ``residual + gate * 0``) and that their query is not
read. The eager reference and the ONNX function, exported from the torch custom op and run by
ONNX Runtime, are checked against that with the query of those rows poisoned with NaN (anything
computed from it would show), and against each other on the rows of the sequence. The CUDA
kernel's side is in tests/test_kernels_gpu.py (rows outside the offsets).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.ops.cross_attention.custom_op import cross_attention, custom_opsets, register_onnx_symbolic
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager
from slowfast_trt.ops.cross_attention.onnx_function import FUNCTION_OPSET, add_cross_attention_function

HEADS, KV_HEADS, DIM, ROWS, SLOW = 4, 2, 8, 6, 7
POISON = 1e4  # slow K/V beyond the length: finite (0 x finite = 0 in the function's MatMul)
NAMES = ("query", "slow_key", "slow_value", "slow_lengths", "row_offsets", "residual", "gate")


class _Op(torch.nn.Module):
    def forward(self, query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate):
        return cross_attention(query, slow_key, slow_value, slow_lengths, row_offsets, residual=residual, gate=gate)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> ort.InferenceSession:
    """The op exported as the exporter does it (TorchScript symbolic + model-local function)."""
    path = tmp_path_factory.mktemp("rows") / "op.onnx"
    register_onnx_symbolic(FUNCTION_OPSET)
    args = tuple(_inputs(length=SLOW, offsets=(0, ROWS)).values())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Op(), args, str(path), dynamo=False, opset_version=FUNCTION_OPSET, input_names=list(NAMES),
                          output_names=["output"], custom_opsets=custom_opsets(),
                          dynamic_axes={"query": {0: "rows"}, "residual": {0: "rows"}, "gate": {0: "rows"},
                                        "slow_key": {2: "slow"}, "slow_value": {2: "slow"}, "output": {0: "rows"}})
    model = onnx.load(str(path))
    assert add_cross_attention_function(model)
    schema = op_schema()
    assert [n.op_type for n in model.graph.node if n.domain == schema["domain"]] == [schema["name"]]
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _inputs(length: int, offsets: tuple[int, int], rows: int = ROWS, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(rows, HEADS, DIM, generator=gen)
    key = torch.randn(1, KV_HEADS, SLOW, DIM, generator=gen)
    value = torch.randn(1, KV_HEADS, SLOW, DIM, generator=gen)
    key[:, :, length:] = POISON
    value[:, :, length:] = -POISON
    outside = torch.ones(rows, dtype=torch.bool)
    outside[offsets[0]:offsets[1]] = False
    query[outside] = float("nan")  # rows of no sequence: must not be read
    return {
        "query": query, "slow_key": key, "slow_value": value,
        "slow_lengths": torch.tensor([length], dtype=torch.int32),
        "row_offsets": torch.tensor(offsets, dtype=torch.int32),
        "residual": torch.randn(rows, HEADS * DIM, generator=gen),
        "gate": torch.randn(rows, 1, generator=gen),
    }


CASES = [(5, (0, ROWS)), (5, (1, 4)), (5, (0, 2)), (5, (3, ROWS)), (5, (2, 2)), (0, (1, 4)), (SLOW, (4, 5))]


@pytest.mark.parametrize("length,offsets", CASES)
def test_eager_and_onnx_runtime_agree_on_rows_of_no_sequence(exported, length, offsets):
    inputs = _inputs(length, offsets)
    want = cross_attention_eager(*inputs.values())
    got = torch.from_numpy(exported.run(["output"], {k: v.numpy() for k, v in inputs.items()})[0])
    start, end = offsets
    outside = [r for r in range(ROWS) if not start <= r < end]
    residual = inputs["residual"]
    for name, out in (("eager", want), ("onnxruntime", got)):
        assert torch.isfinite(out).all(), f"{name}: a NaN query of a row of no sequence reached the output"
        torch.testing.assert_close(out[outside], residual[outside], rtol=0, atol=0, msg=name)  # residual + gate * 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if length and end > start:  # the rows of the sequence really attend
        assert not torch.allclose(want[start:end], residual[start:end], atol=1e-3)


@pytest.mark.parametrize("offsets", [(0, ROWS), (2, 5), (3, 3)])
def test_without_the_gate_rows_of_no_sequence_are_zero(offsets):
    inputs = _inputs(4, offsets)
    out = cross_attention_eager(*(inputs[name] for name in NAMES[:5]))
    outside = [r for r in range(ROWS) if not offsets[0] <= r < offsets[1]]
    assert torch.isfinite(out).all() and (out[outside] == 0).all()


def test_the_contract_states_the_rule():
    text = op_schema()["semantics"]
    assert "Rows of no sequence" in text and "get ctx = 0" in text and "not read" in text


def test_general_and_batch_one_eager_paths_agree_on_rows_of_no_sequence():
    """The device-masked batch-1 path (used on CUDA, capture-safe) keeps the same rule."""
    from slowfast_trt.ops.cross_attention.eager import one_sequence_masked

    for length, offsets in CASES:
        inputs = _inputs(length, offsets)
        want = cross_attention_eager(*(inputs[name] for name in NAMES[:5]))
        got = one_sequence_masked(*(inputs[name] for name in NAMES[:5]), DIM**-0.5, torch.float32)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert np.isnan(_inputs(5, (1, 4))["query"][0].numpy()).all()  # the poison is really there
