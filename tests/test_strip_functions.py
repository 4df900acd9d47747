"""Stripping the custom op's local function for TensorRT, on a small hand-made ONNX model.

The model: x (rows, H*D) -> MatMul with an external-data weight -> Reshape to (rows, H, D)
-> ``slowfast_trt::SlowFastCrossAttention`` (with the real model-local function of
``onnx_function.py``) -> output. ``build_cross_attention_model`` is reused by the lint and
CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from slowfast_trt.ops.cross_attention.eager import cross_attention_eager
from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.ops.cross_attention.onnx_function import FUNCTION_OPSET, cross_attention_function
from slowfast_trt.export.strip_functions import default_stripped_path, strip_file, strip_local_functions

HEADS, KV_HEADS, DIM = 4, 2, 8
WIDTH = HEADS * DIM
DATA_FILE = "weights.bin"


def cross_attention_node(name: str = "/decoder/layers.0/cross_attn/SlowFastCrossAttention", **overrides):
    schema = op_schema()
    attrs = dict(
        num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=DIM, scale=DIM**-0.5, fuse_gate=1,
        plugin_version=schema["plugin_version"], plugin_namespace=schema["plugin_namespace"],
    )
    attrs.update(overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    inputs = ["query", "slow_key", "slow_value", "slow_lengths", "row_offsets", "residual", "gate"]
    return helper.make_node(schema["name"], inputs, ["output"], name=name, domain=schema["domain"], **attrs)


def build_cross_attention_model(seed: int = 0, with_function: bool = True) -> onnx.ModelProto:
    """The hand-made model (weights in memory; save with ``save_with_external_data``)."""
    schema = op_schema()
    weight = np.random.default_rng(seed).standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.3
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("MatMul", ["x", "w_q"], ["q_flat"], name="/q_proj/MatMul"),
        helper.make_node("Reshape", ["q_flat", "q_shape"], ["query"], name="/q_proj/Reshape"),
        cross_attention_node(),
    ]
    graph = helper.make_graph(
        nodes,
        "cross_attention_test",
        inputs=[
            helper.make_tensor_value_info("x", f32, ["rows", WIDTH]),
            helper.make_tensor_value_info("slow_key", f32, [1, KV_HEADS, "slow_tokens", DIM]),
            helper.make_tensor_value_info("slow_value", f32, [1, KV_HEADS, "slow_tokens", DIM]),
            helper.make_tensor_value_info("slow_lengths", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("row_offsets", TensorProto.INT32, [2]),
            helper.make_tensor_value_info("residual", f32, ["rows", WIDTH]),
            helper.make_tensor_value_info("gate", f32, ["rows", 1]),
        ],
        outputs=[helper.make_tensor_value_info("output", f32, ["rows", WIDTH])],
        initializer=[
            numpy_helper.from_array(weight, "w_q"),
            numpy_helper.from_array(np.array([0, HEADS, DIM], dtype=np.int64), "q_shape"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", FUNCTION_OPSET), helper.make_opsetid(schema["domain"], schema["op_version"])],
        functions=[cross_attention_function()] if with_function else [],
    )
    model.ir_version = 8
    return model


def save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path), save_as_external_data=True, location=DATA_FILE, size_threshold=256)
    return path


def sample_inputs(rows: int = 5, slow: int = 6, valid: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, WIDTH)).astype(np.float32),
        "slow_key": rng.standard_normal((1, KV_HEADS, slow, DIM)).astype(np.float32),
        "slow_value": rng.standard_normal((1, KV_HEADS, slow, DIM)).astype(np.float32),
        "slow_lengths": np.array([valid], dtype=np.int32),
        "row_offsets": np.array([0, rows], dtype=np.int32),
        "residual": rng.standard_normal((rows, WIDTH)).astype(np.float32),
        "gate": rng.standard_normal((rows, 1)).astype(np.float32),
    }


@pytest.fixture()
def saved_model(tmp_path) -> Path:
    return save_with_external_data(build_cross_attention_model(), tmp_path / "decoder.onnx")


def _custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == op_schema()["domain"]]


def test_strip_in_memory_keeps_node_and_attributes():
    model = build_cross_attention_model()
    stripped = strip_local_functions(model)
    assert len(model.functions) == 1, "the input model must not be modified"
    assert len(stripped.functions) == 0
    before, after = _custom_nodes(model), _custom_nodes(stripped)
    assert len(after) == 1 and after[0] == before[0]
    names = {a.name for a in after[0].attribute}
    assert names == {a["name"] for a in op_schema()["attributes"]}
    assert any(o.domain == op_schema()["domain"] for o in stripped.opset_import)


def test_strip_keeps_functions_of_other_domains():
    model = build_cross_attention_model()
    other = helper.make_function("other_domain", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                 [helper.make_opsetid("", FUNCTION_OPSET)])
    model.functions.append(other)
    stripped = strip_local_functions(model)
    assert [(f.domain, f.name) for f in stripped.functions] == [("other_domain", "Twice")]


def test_strip_file_with_external_data(saved_model):
    data = saved_model.parent / DATA_FILE
    data_before = data.read_bytes()
    out = strip_file(saved_model)
    assert out == default_stripped_path(saved_model) == saved_model.parent / "decoder.trt.onnx"
    assert data.read_bytes() == data_before, "the external data file must not be rewritten"
    assert sorted(p.name for p in saved_model.parent.iterdir()) == ["decoder.onnx", "decoder.trt.onnx", DATA_FILE]
    # The stripped graph proto is small: the weights stay in the shared data file.
    assert out.stat().st_size < len(data_before)
    onnx.checker.check_model(str(out), full_check=False)
    loaded = onnx.load(str(out))  # resolves the external data relative to the stripped file
    assert not loaded.functions
    weight = numpy_helper.to_array(next(i for i in loaded.graph.initializer if i.name == "w_q"))
    original = numpy_helper.to_array(next(i for i in onnx.load(str(saved_model)).graph.initializer if i.name == "w_q"))
    np.testing.assert_array_equal(weight, original)
    assert _custom_nodes(loaded)[0] == _custom_nodes(onnx.load(str(saved_model)))[0]


def test_strip_file_refuses_other_folder_with_external_data(saved_model, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ValueError, match="next to the external data"):
        strip_file(saved_model, other / "decoder.trt.onnx")
    with pytest.raises(ValueError, match="must not overwrite"):
        strip_file(saved_model, saved_model)
    with pytest.raises(ValueError, match="not found"):
        strip_file(tmp_path / "missing.onnx")


def test_onnxruntime_runs_the_unstripped_model(saved_model):
    import onnxruntime as ort

    feeds = sample_inputs()
    session = ort.InferenceSession(str(saved_model), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, feeds)
    weight = numpy_helper.to_array(onnx.load(str(saved_model)).graph.initializer[0])
    query = torch.from_numpy(feeds["x"] @ weight).reshape(-1, HEADS, DIM)
    want = cross_attention_eager(
        query, *(torch.from_numpy(feeds[k]) for k in ("slow_key", "slow_value", "slow_lengths", "row_offsets", "residual", "gate"))
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_stripped_model_has_no_onnxruntime_kernel(saved_model):
    """The function was what ONNX Runtime ran: without it the custom node has no CPU kernel."""
    import onnxruntime as ort

    with pytest.raises(Exception, match="SlowFastCrossAttention|slowfast_trt"):
        ort.InferenceSession(str(strip_file(saved_model)), providers=["CPUExecutionProvider"])


def test_strip_cli(saved_model, capsys):
    from slowfast_trt.cli.strip_functions import main

    assert main([str(saved_model)]) == 0
    assert capsys.readouterr().out.strip().endswith("decoder.trt.onnx")
    assert main([str(saved_model.parent / "nope.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
