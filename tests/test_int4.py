"""INT4 weight-only decoder: packing, blockwise quantization, the ONNX rewrite run in ONNX
Runtime, AWQ scale folding.

Thresholds. The rewrite itself is checked exactly: the INT4 graph in ONNX Runtime (float32
activations, ``accuracy_level`` 1) must match the PyTorch model whose Linear weights are
replaced by their quantize-dequantize (rtol 1e-4 of the largest logit, the float32 export
tolerance of test_export_subgraphs). Against the float32 model the logits must keep a
cosine >= 0.9: on these random hidden-64 models one 64-wide group per output channel puts
~10 % relative error on every projection of 4 layers (measured 0.95-0.96 for RTN and AWQ;
the 7B-width model of bench_int4_accuracy.py measures much closer), so 0.9 catches a
broken rewrite (wrong axis or scale: cosine ~0) while tolerating the quantization noise.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.export.awq import apply_awq, fold_scales, search_scale
from slowfast_trt.export.quantize_int4 import (
    DEFAULT_PATTERN,
    block_size_for,
    dequantize_blockwise,

    fake_quantize_linear,
    pack_int4,
    quantize_blockwise,
    unpack_int4,
    upgrade_opset,
)
from slowfast_trt.export.int4_export import export_int4_awq
from slowfast_trt.export.subgraphs import decoder_example_inputs, export_decoder
from slowfast_trt.models.slowfast.reference import ReferenceGenerator

FRAMES, MAX_SEQ = 32, 128


# ---- packing and numerics against numpy references ---------------------------------------


def _pack_reference(values: np.ndarray) -> bytes:
    out = bytearray((values.size + 1) // 2)
    for i, v in enumerate(values.reshape(-1).tolist()):
        out[i // 2] |= (int(v) & 0xF) << (4 * (i % 2))
    return bytes(out)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 129, 1000])
def test_pack_unpack_round_trip_all_values_odd_sizes(count):
    rng = np.random.default_rng(count)
    values = rng.integers(-8, 8, count).astype(np.int8)
    values[: min(count, 16)] = np.arange(-8, 8)[: min(count, 16)]  # every code incl. -8 and 7
    packed = pack_int4(values)
    assert packed.dtype == np.uint8 and packed.size == (count + 1) // 2
    assert packed.tobytes() == _pack_reference(values)
    np.testing.assert_array_equal(unpack_int4(packed, count), values)


def test_packing_is_the_onnx_int4_layout():
    values = np.array([[-8, -1, 0, 7, 3], [5, -3, -7, 1, 2], [6, -5, 4, -2, -6]], np.int8)  # odd count 15
    tensor = TensorProto(name="q", data_type=TensorProto.INT4, dims=list(values.shape), raw_data=pack_int4(values).tobytes())
    np.testing.assert_array_equal(numpy_helper.to_array(tensor).astype(np.int8), values)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="-8, 7"):
        pack_int4(np.array([8]))
    with pytest.raises(ValueError, match="expected 5"):
        unpack_int4(np.zeros(2, np.uint8), 5)


@pytest.mark.parametrize("k,n,block", [(64, 6, 64), (96, 5, 32), (256, 3, 128), (40, 1, 20)])
def test_quantize_blockwise_matches_numpy_reference(k, n, block):
    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((k, n)).astype(np.float32) * rng.uniform(0.01, 3, (1, n)).astype(np.float32)
    w[:block, 0] = 0.0  # an all-zero group: scale must stay > 0 (TensorRT)
    q, scale = quantize_blockwise(torch.from_numpy(w), block)
    groups = w.reshape(k // block, block, n)
    ref_scale = np.abs(groups).max(axis=1) / 7.0
    ref_scale = np.where(ref_scale > 0, ref_scale, np.finfo(np.float32).tiny).astype(np.float32)
    ref_q = np.clip(np.rint(groups / ref_scale[:, None, :]), -8, 7).astype(np.int8).reshape(k, n)
    np.testing.assert_array_equal(scale.numpy(), ref_scale)
    np.testing.assert_array_equal(q.numpy(), ref_q)
    assert q.min() >= -8 and q.max() <= 7 and (q.numpy() < 0).any()
    deq = dequantize_blockwise(q, scale, block).numpy()
    np.testing.assert_array_equal(deq, ref_q.astype(np.float32) * np.repeat(ref_scale, block, axis=0))
    assert np.all(np.abs(deq - w) <= np.repeat(ref_scale, block, axis=0) / 2 + 1e-7)


def test_fp16_scales_are_rounded_before_quantizing():
    w = torch.randn(128, 4) * 1e-3
    q, scale = quantize_blockwise(w, 128, torch.float16)
    assert scale.dtype == torch.float16 and bool((scale > 0).all())
    expected = torch.clamp(torch.round(w / scale.float().repeat_interleave(128, 0)), -8, 7)
    assert torch.equal(q.float(), expected)


def test_block_size_rule():
    assert block_size_for(3584) == 128 and block_size_for(18944) == 128
    assert block_size_for(64) == 64  # the tiny models: one group spans the input dim
    assert block_size_for(96) == 96 and block_size_for(200) == 100 and block_size_for(384) == 128
    with pytest.raises(ValueError, match="no divisor"):
        block_size_for(131)  # prime: TensorRT needs a block dividing K


def test_upgrade_opset_moves_reduce_axes_to_an_input_and_refuses_unknown_changes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])
    node = helper.make_node("ReduceMean", ["x"], ["y"], name="/norm/ReduceMean", axes=[-1], keepdims=1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the torch exporter writes
    upgrade_opset(model)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 21 and model.ir_version == 10
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": data})[0]
    np.testing.assert_allclose(out, data.mean(-1, keepdims=True))
    bad = helper.make_model(helper.make_graph([helper.make_node("Resize", ["x", "", "s"], ["y"])], "g", [x], [y]),
                            opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="Resize changed"):
        upgrade_opset(bad)


# ---- AWQ ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return ReferenceGenerator.load(tiny_ckpt, dtype="float32")


def _decoder_outputs(model, seed=3):
    """Prefill with attending rows and slow K/V from the model's own slow_kv: (logits, keys, values)."""
    gen = torch.Generator().manual_seed(seed)
    text = model.config.text
    slow = torch.randn(1, 40, text.hidden_size, generator=gen)
    embeds = torch.randn(1, 20, text.hidden_size, generator=gen)
    past_k, past_v = model.empty_cache()
    with torch.no_grad():
        keys, values = model.decoder.slow_kv(slow)
        logits, new_k, new_v = model.decoder(
            embeds, torch.arange(20)[None], past_k, past_v, slow_keys=keys, slow_values=values,
            slow_lengths=torch.tensor([40], dtype=torch.int32), cross_rows=torch.arange(10, 20),
            cross_row_offsets=torch.tensor([0, 10], dtype=torch.int32),
        )
    return [logits, *new_k, *new_v, *keys, *values]


def _assert_same(actual, expected, rtol=1e-5):
    for a, e in zip(actual, expected):
        scale = float(e.abs().max())
        torch.testing.assert_close(a, e, rtol=0, atol=rtol * max(scale, 1e-6))


def test_random_scales_fold_exactly(tiny):
    model = copy.deepcopy(tiny.model)
    before = _decoder_outputs(model)
    gen = torch.Generator().manual_seed(0)
    text = model.config.text
    for layer in model.decoder.layers:
        fold_scales(layer, {
            "qkv": torch.rand(text.hidden_size, generator=gen) * 3.75 + 0.25,
            "mlp": torch.rand(text.hidden_size, generator=gen) * 3.75 + 0.25,
            "down": torch.rand(text.intermediate_size, generator=gen) * 3.75 + 0.25,
        })
    assert not torch.equal(model.decoder.layers[0].q_proj.weight, tiny.model.decoder.layers[0].q_proj.weight)
    _assert_same(_decoder_outputs(model), before)  # hybrid layers' slow K/V included


def test_awq_search_folds_exactly_and_never_loses_to_rtn(tiny):
    model = copy.deepcopy(tiny.model)
    before = _decoder_outputs(model)
    report = apply_awq(model, tokenizer=tiny.tokenizer, grid=10)
    assert report["method"] == "awq" and report["prompts"] > 0
    for layer in report["layers"]:
        for group in ("qkv", "mlp", "down"):
            assert layer[group]["loss_awq"] <= layer[group]["loss_rtn"]
    _assert_same(_decoder_outputs(model), before)


def test_search_scale_finds_outlier_channels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=gen)
    x[:, :4] *= 30.0  # activation outliers, as in trained LLMs
    w = torch.randn(64, 128, generator=gen)
    result = search_scale(x, [w], block=128, grid=20)
    assert result["alpha"] > 0 and result["loss_awq"] < 0.8 * result["loss_rtn"]
    assert float(result["scale"][:4].min()) > float(result["scale"][4:].max())


def test_no_calibration_means_round_to_nearest(tiny):
    model = copy.deepcopy(tiny.model)
    assert apply_awq(model)["method"] == "rtn"
    assert torch.equal(model.decoder.layers[0].q_proj.weight, tiny.model.decoder.layers[0].q_proj.weight)


# ---- the rewritten decoder in ONNX Runtime ---------------------------------------------------


def _session(path, accuracy_level="1"):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # ORT fuses DequantizeLinear -> MatMul into MatMulNBits; level 1 keeps float32 activations.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", accuracy_level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def int4_export(tiny, tmp_path_factory):
    """fp32 decoders of the tiny model, and the INT4 (AWQ) export of a copy of it."""
    base = tmp_path_factory.mktemp("fp32")
    original = copy.deepcopy(tiny.model)
    export_decoder(original, base, "float32", FRAMES, MAX_SEQ, cross=True)
    folded = copy.deepcopy(tiny.model)
    out = tmp_path_factory.mktemp("int4")
    specs = export_int4_awq(folded, out, FRAMES, MAX_SEQ, tokenizer=tiny.tokenizer, activation_precision="float32")
    return base, out, specs, folded


def _feeds(spec, seed=1):
    args = decoder_example_inputs(spec, "cpu", torch.Generator().manual_seed(seed), seq=20, past=3, slow=40, rows=10)
    return {t.name: a.numpy() for t, a in zip(spec.inputs, args)}, args


def test_int4_graph_structure_and_storage(int4_export):
    _, out, _, _ = int4_export
    report = json.loads((out / "quantization.json").read_text())
    assert report["awq"]["method"] == "awq" and report["scale_dtype"] == "float32"
    assert len(report["quantized"]) == 7 * 4 and report["bytes_after"] < 0.6 * report["bytes_before"]
    regions = {}
    for name in ("decoder.onnx", "decoder_nocross.onnx"):
        model = onnx.load(str(out / name), load_external_data=False)
        assert {o.domain: o.version for o in model.opset_import}[""] == 21 and model.ir_version >= 10
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dq) == 28 and all(n.name.endswith("/DequantizeLinear") for n in dq)
        attrs = {a.name: a.i for a in dq[0].attribute}
        assert attrs["axis"] == 0 and attrs["block_size"] in (64, 128)
        inits = {t.name: t for t in model.graph.initializer}
        for entry in report["quantized"]:
            q = inits[entry["name"] + ".int4"]
            info = {e.key: e.value for e in q.external_data}
            assert q.data_type == TensorProto.INT4 and int(info["length"]) == (entry["k"] * entry["n"] + 1) // 2
            assert info["location"] == "decoder.onnx.data"
            regions.setdefault(q.name, info["offset"])
            assert regions[q.name] == info["offset"]  # decoder_nocross reads the same bytes
            assert entry["name"] not in inits and DEFAULT_PATTERN.search(entry["name"])
        assert "decoder.lm_head.weight.T" in inits  # the LM head stays float
    assert not any(p.name.endswith("int4-tmp") for p in out.iterdir())


def test_int4_decoder_passes_the_tensorrt_lint_once_stripped(int4_export, tmp_path):
    from slowfast_trt.export.strip_functions import strip_local_functions
    from slowfast_trt.export.trt_lint import lint_model

    _, out, _, _ = int4_export
    model = onnx.load(str(out / "decoder.onnx"), load_external_data=False)
    problems = lint_model(strip_local_functions(model))
    assert problems == [], problems  # opset 21 is accepted because the weights are INT4


def test_int4_decoder_equals_dequantized_torch_model(int4_export):
    """The graph computes exactly the folded model with quantize-dequantized projections."""
    _, out, specs, folded = int4_export
    reference = copy.deepcopy(folded)
    with torch.no_grad():
        for layer in reference.decoder.layers:
            for linear in (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj,
                           layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                linear.weight.copy_(fake_quantize_linear(linear.weight, block_size_for(linear.in_features)))
    spec = specs[S.DECODER]
    feeds, args = _feeds(spec)
    got = _session(out / spec.file).run(["logits"], feeds)[0]
    from slowfast_trt.export.subgraphs import DecoderGraph

    with torch.no_grad():
        expected = DecoderGraph(reference.decoder, cross=True).compute(*args)[0]
    scale = float(expected.abs().max())
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("accuracy_level", ["1", "4"])
def test_int4_decoder_close_to_fp32(int4_export, accuracy_level):
    base, out, specs, _ = int4_export
    feeds, _ = _feeds(specs[S.DECODER], seed=5)
    ref = _session(base / "decoder.onnx").run(["logits"], feeds)[0].ravel()
    got = _session(out / "decoder.onnx", accuracy_level).run(["logits"], feeds)[0].ravel()
    cosine = float(np.dot(ref, got) / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cosine >= 0.9, cosine
    nocross_feeds = {t.name: feeds[t.name] for t in specs[S.DECODER_NOCROSS].inputs}
    assert _session(out / "decoder_nocross.onnx", accuracy_level).run(["logits"], nocross_feeds)[0].shape == (1, got.size)
