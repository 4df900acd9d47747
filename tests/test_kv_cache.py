"""KV-cache manager and the plain engine helpers every backend shares (no model needed)."""

import pytest
import torch

from slowfast_trt.runtime.engine import (
    EngineError,
    TensorInfo,
    check_feeds,
    check_output_buffer,
    data_pointer,
    numpy_dtype,
    resolve_output_shape,
    torch_dtype,
)
from slowfast_trt.runtime.kv_cache import KVCache, KVCacheSpec
from slowfast_trt.runtime.session import common_prefix, row_ids, sampling_params

SPEC = KVCacheSpec(num_layers=3, kv_heads=2, head_dim=4, max_len=10)


def _rows(n, start=0.0):
    return [torch.arange(n * 8, dtype=torch.float32).reshape(1, n, 2, 4) + start + layer for layer in range(3)]


def test_buffers_are_allocated_once_and_written_in_place():
    kv = KVCache(SPEC)
    pointers = [k.data_ptr() for k in kv.keys] + [v.data_ptr() for v in kv.values]
    assert kv.keys[0].shape == (1, 10, 2, 4) and SPEC.nbytes == 2 * 3 * 10 * 8 * 4
    kv.append(_rows(3), _rows(3, 100.0))
    for step in range(4):  # decode-like steps: write into the slot views, then commit
        key_slots, value_slots = kv.slots(1)
        for layer, (ks, vs) in enumerate(zip(key_slots, value_slots)):
            assert ks.is_contiguous() and ks.data_ptr() == kv.keys[layer].data_ptr() + kv.length * 8 * 4
            ks.fill_(step)
            vs.fill_(-step)
        kv.commit(1)
    assert [k.data_ptr() for k in kv.keys] + [v.data_ptr() for v in kv.values] == pointers
    keys, values = kv.past()
    assert kv.length == 7 and keys[1].shape == (1, 7, 2, 4) and keys[1].is_contiguous()
    assert keys[1].data_ptr() == kv.keys[1].data_ptr()  # a view, not a copy
    assert torch.equal(keys[2][:, :3], _rows(3)[2]) and torch.equal(values[0][:, 3:], -torch.arange(4.0).reshape(1, 4, 1, 1).expand(1, 4, 2, 4))


def test_overflow_is_a_value_error_with_the_numbers_not_a_truncation():
    kv = KVCache(SPEC)
    kv.append(_rows(8), _rows(8))
    with pytest.raises(ValueError, match=r"8 cached rows \+ 3 rows .* = 11 exceeds the maximum sequence length 10"):
        kv.slots(3)
    with pytest.raises(ValueError, match="exceeds"):
        kv.append(_rows(3), _rows(3))
    assert kv.length == 8  # unchanged by the failed calls
    kv.slots(2)
    kv.commit(2)
    assert kv.free == 0


def test_rollback_reset_and_release():
    kv = KVCache(SPEC)
    kv.append(_rows(5), _rows(5))
    kv.rollback(2)
    assert kv.length == 2
    kv.append(_rows(1, 50.0), _rows(1, 50.0))
    assert torch.equal(kv.past()[0][0][:, 2], _rows(1, 50.0)[0][:, 0])
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match="cannot roll back"):
            kv.rollback(bad)
    kv.reset()
    assert kv.length == 0 and kv.past()[0][0].shape == (1, 0, 2, 4)
    kv.release()
    assert kv.released
    with pytest.raises(ValueError, match="after release"):
        kv.past()


def test_spec_validation():
    with pytest.raises(ValueError, match="max_len"):
        KVCacheSpec(num_layers=2, kv_heads=2, head_dim=4, max_len=0)


def test_dtype_names_of_every_backend():
    assert torch_dtype("float16") == torch_dtype("tensor(float16)") == torch_dtype("DataType.HALF") == torch.float16
    assert torch_dtype("tensor(float)") == torch_dtype("DataType.FLOAT") == torch.float32
    assert torch_dtype("DataType.BF16") == torch.bfloat16 and torch_dtype("tensor(int64)") == torch.int64
    assert numpy_dtype(torch.int32).name == "int32"
    with pytest.raises(EngineError, match="unsupported tensor dtype"):
        torch_dtype("complex64")
    with pytest.raises(EngineError, match="bfloat16"):
        numpy_dtype("bfloat16")


def test_feed_and_output_checks():
    inputs = (TensorInfo("x", "float32", (1, "seq", 4)), TensorInfo("p", "int64", (1, "seq")))
    good = {"x": torch.zeros(1, 3, 4), "p": torch.zeros(1, 3, dtype=torch.int64)}
    check_feeds("dec", inputs, good)
    with pytest.raises(EngineError, match="missing p; unknown q"):
        check_feeds("dec", inputs, {"x": good["x"], "q": good["p"]})
    with pytest.raises(EngineError, match=r"input x has shape \(1, 3, 5\), expected \(1, seq, 4\)"):
        check_feeds("dec", inputs, {**good, "x": torch.zeros(1, 3, 5)})
    with pytest.raises(EngineError, match="dtype float16, expected float32"):
        check_feeds("dec", inputs, {**good, "x": torch.zeros(1, 3, 4, dtype=torch.float16)})
    out = TensorInfo("new_key_0", "float32", (1, "seq", 2, 4))
    assert resolve_output_shape("dec", out, inputs, good) == (1, 3, 2, 4)
    assert resolve_output_shape("dec", TensorInfo("y", "float32", ("other",)), inputs, good) is None
    with pytest.raises(EngineError, match="dimension 'seq' is 3 in one input and 2"):
        resolve_output_shape("dec", out, inputs, {**good, "p": torch.zeros(1, 2, dtype=torch.int64)})
    with pytest.raises(EngineError, match="output buffer logits"):
        check_output_buffer("dec", "logits", torch.zeros(1, 5), (1, 6), torch.float32)
    with pytest.raises(EngineError, match="contiguous"):
        check_output_buffer("dec", "k", torch.zeros(4, 4).t(), (4, 4), torch.float32)


def test_empty_tensors_get_a_valid_address():
    assert data_pointer(torch.zeros(0, dtype=torch.int64)) != 0
    big = torch.zeros(1, 10, 2, 4)
    assert data_pointer(big[:, 3:5]) == big.data_ptr() + 3 * 8 * 4
    with pytest.raises(EngineError, match="contiguous"):
        data_pointer(torch.zeros(2, 10, 2, 4)[:, 3:5])  # batch 2: a slice of the seq axis is not dense


def test_row_ids_and_common_prefix():
    assert row_ids((5, 6, -200, 7), 2, 3) == [5, 6, -200, -200, -200, 7]
    assert row_ids((5, 6), None, 3) == [5, 6]
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([1, 2], [1, 2, 3]) == 2 and common_prefix([], [1]) == 0


def test_sampling_params_from_keywords():
    params = sampling_params(max_new_tokens=3, stop_strings=["ab"], stop_token_ids=7)
    assert params.stop_strings == ("ab",) and params.stop_token_ids == (7,)
    with pytest.raises(ValueError, match="unknown sampling argument.*max_tokens"):
        sampling_params(max_tokens=3)
