"""TensorRT 10.3 lint: the operator table, a clean hand-made model, and one rule per bad model."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.export.strip_functions import strip_file
from slowfast_trt.cli.trt_lint import main
from slowfast_trt.export.trt_lint import lint_model, trt_ops
from test_strip_functions import build_cross_attention_model, cross_attention_node, save_with_external_data

F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32


def test_operator_table_names_its_source():
    table = trt_ops()
    assert table["tensorrt_version"] == "10.3"
    assert (table["opset_min"], table["opset_max"]) == (9, 20)
    source = table["source"]
    assert source["repository"].endswith("onnx/onnx-tensorrt") and source["file"] == "docs/operators.md"
    assert len(source["commit"]) == 40 and source["ref"]
    supported = table["supported"]
    # What our graphs use, and what the 10.x parser is known to lack.
    for op in ("MatMul", "Softmax", "Gather", "Conv", "AveragePool", "Where", "CastLike", "LayerNormalization", "Trilu"):
        assert op in supported, op
    for op in ("Unique", "StringNormalizer", "MatMulInteger", "SequenceAt"):
        assert op in table["unsupported"] and op not in supported
    assert all(isinstance(e["types"], list) for e in supported.values())
    assert "INT64" not in supported["MatMul"]["types"]


def test_clean_stripped_model_and_function_rule(tmp_path):
    path = save_with_external_data(build_cross_attention_model(), tmp_path / "decoder.onnx")
    problems = lint_model(path)
    assert len(problems) == 1 and "local function slowfast_trt.SlowFastCrossAttention" in problems[0]
    assert lint_model(strip_file(path)) == []


def _bad_model() -> onnx.ModelProto:
    schema = op_schema()
    unnamed = helper.make_tensor_value_info("x", F32, ["rows", 8])
    unnamed.type.tensor_type.shape.dim[0].Clear()  # neither a value nor a name
    nodes = [
        helper.make_node("Unique", ["x"], ["uniq"], name="/unique"),
        helper.make_node("FusedMatMul", ["x", "x"], ["fused"], name="/fused", domain="com.microsoft"),
        helper.make_node("MatMul", ["input_ids", "int_weight"], ["int_product"], name="/int_matmul"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="/shape"),
        helper.make_node("Slice", ["x_shape", "zero", "one"], ["axes_computed"], name="/axes"),
        helper.make_node("Squeeze", ["gen", "axes_computed"], ["squeezed"], name="/squeeze"),
        cross_attention_node(name="/cross", scale=None, plugin_version="2"),
        helper.make_node("OtherOp", ["x"], ["other"], name="/other", domain=schema["domain"]),
    ]
    # The contract node reads these names; feed slow_lengths as int64 (the plugin reads int32).
    inputs = [
        unnamed,
        helper.make_tensor_value_info("gen", F32, ["s0", 1]),
        helper.make_tensor_value_info("input_ids", I64, ["batch", "seq"]),
        helper.make_tensor_value_info("lengths", I64, [1]),
        helper.make_tensor_value_info("query", F32, ["rows", 4, 8]),
        helper.make_tensor_value_info("slow_key", F32, [1, 2, "slow_tokens", 8]),
        helper.make_tensor_value_info("slow_value", F32, [1, 2, "slow_tokens", 8]),
        helper.make_tensor_value_info("slow_lengths", I64, [1]),
        helper.make_tensor_value_info("row_offsets", I32, [2]),
        helper.make_tensor_value_info("residual", F32, ["rows", 32]),
        helper.make_tensor_value_info("gate", F32, ["rows", 1]),
    ]
    graph = helper.make_graph(
        nodes, "bad", inputs,
        outputs=[helper.make_tensor_value_info("int_product", I64, None), helper.make_tensor_value_info("output", F32, None)],
        initializer=[
            numpy_helper.from_array(np.ones((4, 4), dtype=np.int64), "int_weight"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        ],
    )
    other_fn = helper.make_function("helpers", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid(schema["domain"], 1)],
        functions=[other_fn],
    )


EXPECTED = {
    "opset": "opset 21: TensorRT 10.3 supports ONNX opsets 9..20",
    "unsupported op": "node /unique: op Unique is not supported",
    "foreign domain": "node /fused: op com.microsoft.FusedMatMul has no TensorRT importer",
    "dtype": "node /int_matmul: MatMul on INT64",
    "constant input": "node /squeeze: input 1 of Squeeze must be a constant",
    "int64 input": "input lengths: int64",
    "int64 input into the plugin": "input slow_lengths: int64",
    "int64 output": "output int_product: int64",
    "unnamed dim": "input x: axis 0 is an unnamed dynamic dim",
    "generated dim": "input gen: axis 0 is the generated dim name 's0'",
    "missing attribute": "node /cross: attribute scale missing",
    "plugin version": "node /cross: plugin_version '2' differs",
    "plugin int32 input": "node /cross: input slow_lengths (slow_lengths) is INT64",
    "other custom op": "node /other: slowfast_trt.OtherOp is not an op of our plugin",
    "other function": "local function helpers.Twice",
}


def test_bad_model_flags_every_rule(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_bad_model(), str(path))
    problems = lint_model(path)
    text = "\n".join(problems)
    for rule, fragment in EXPECTED.items():
        assert fragment in text, f"{rule}: {fragment!r} not in\n{text}"
    # Allowed: int64 input_ids with named dims; int32 row_offsets; named symbolic dims.
    assert "input input_ids" not in text and "row_offsets (row_offsets)" not in text
    assert "slow_tokens" not in text
    assert len(problems) == len(EXPECTED), text


def test_lint_cli(tmp_path, capsys):
    good = strip_file(save_with_external_data(build_cross_attention_model(), tmp_path / "decoder.onnx"))
    bad = tmp_path / "bad.onnx"
    onnx.save(_bad_model(), str(bad))
    assert main([str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    assert main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: ok" and all(line.startswith(f"{bad}: ") for line in out[1:])
    assert main([str(tmp_path / "missing.onnx")]) == 2
    assert "error: " in capsys.readouterr().err


def test_profile_dims(tmp_path):
    stripped = strip_file(save_with_external_data(build_cross_attention_model(), tmp_path / "decoder.onnx"))
    assert lint_model(stripped, profile_dims=["rows", "slow_tokens"]) == []
    (problem,) = lint_model(stripped, profile_dims=["rows"])[:1]
    assert "dim 'slow_tokens' has no (min, max) range" in problem


def test_lint_never_reads_weights(tmp_path):
    path = save_with_external_data(build_cross_attention_model(), tmp_path / "decoder.onnx")
    stripped = strip_file(path)
    (tmp_path / "weights.bin").unlink()  # lint only reads the graph proto
    assert lint_model(stripped) == []


@pytest.mark.parametrize("opset", [8, 21])
def test_opset_bounds(opset):
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", F32, [2])], [helper.make_tensor_value_info("y", F32, [2])]),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    assert any(p.startswith(f"opset {opset}:") for p in lint_model(model))
