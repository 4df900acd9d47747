"""Model-local ONNX function for ``slowfast_trt::SlowFastCrossAttention`` (standard ops only).

Added to every exported graph that contains the custom node so ONNX Runtime, which inlines
model-local functions, runs the same file TensorRT parses (where the plugin replaces the
node; the exporter CLI may strip the function for TensorRT). The decomposition implements
``cross_attention_eager`` for:

* batch 1 (``slow_key`` (1, Hkv, Ns, D)), which is all the exported decoder feeds it;
* ``row_offsets``: rows outside ``[row_offsets[0], row_offsets[-1])`` belong to no sequence and
  get ``ctx = 0`` (output ``residual + gate * 0``), their query unread, as in the contract;
* ``fuse_gate = 1`` (output ``residual + gate * ctx``), the only form the exporter emits;
* ``slow_lengths`` masking: tokens ``>= slow_lengths[0]`` get no weight, and
  ``slow_lengths[0] == 0`` gives ``ctx = 0`` (so the output is exactly ``residual``);
* GQA without repeating K/V: the queries are viewed as (Hkv, G * R, D) against (Hkv, Ns, D);
* scores, softmax, context and the gated sum in float32 whatever T is, then ``CastLike``.

Reshapes put ``-1`` on the row axis, so R = 0 (no attending row) works in ONNX Runtime.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from slowfast_trt.ops.cross_attention.contract import op_schema

# Standard-op opset the function body is written against (the exported graphs use the same).
FUNCTION_OPSET = 17


def _node(op, inputs, outputs, name, **attrs):
    return helper.make_node(op, inputs, outputs, name=f"{op_schema()['name']}/{name}", **attrs)


def _const(name, value):
    return _node("Constant", [], [name], name, value=value)


def _body() -> list[onnx.NodeProto]:
    f32 = TensorProto.FLOAT
    return [
        _const("minus_one", helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])),
        _const("axis0", helper.make_tensor("axis0", TensorProto.INT64, [1], [0])),
        _const("zero_i", helper.make_tensor("zero_i", TensorProto.INT64, [], [0])),
        _const("one_i", helper.make_tensor("one_i", TensorProto.INT64, [], [1])),
        _const("neg_inf", helper.make_tensor("neg_inf", f32, [], [float("-inf")])),
        _const("zero_f", helper.make_tensor("zero_f", f32, [], [0.0])),
        _scale_node(),
        # Static sizes from the inputs: Hkv, Ns, D from slow_key; H from query.
        _node("Shape", ["slow_key"], ["kv_heads"], "kv_heads", start=1, end=2),
        _node("Shape", ["slow_key"], ["slow_tokens"], "slow_tokens", start=2, end=3),
        _node("Shape", ["slow_key"], ["head_dim"], "head_dim", start=3, end=4),
        _node("Shape", ["query"], ["heads"], "heads", start=1, end=2),
        _node("Mul", ["heads", "head_dim"], ["width"], "width"),
        # Queries (R, H, D) -> (H, R, D) -> (Hkv, G*R, D): heads of a group are adjacent.
        _node("Cast", ["query"], ["q32"], "q_cast", to=f32),
        _node("Transpose", ["q32"], ["q_hrd"], "q_transpose", perm=[1, 0, 2]),
        _node("Concat", ["kv_heads", "minus_one", "head_dim"], ["q_shape"], "q_shape", axis=0),
        _node("Reshape", ["q_hrd", "q_shape"], ["q_groups"], "q_groups"),
        # Keys/values of sequence 0: (1, Hkv, Ns, D) -> (Hkv, Ns, D).
        _node("Cast", ["slow_key"], ["k32"], "k_cast", to=f32),
        _node("Cast", ["slow_value"], ["v32"], "v_cast", to=f32),
        _node("Squeeze", ["k32", "axis0"], ["k3"], "k_squeeze"),
        _node("Squeeze", ["v32", "axis0"], ["v3"], "v_squeeze"),
        _node("Transpose", ["k3"], ["k_t"], "k_transpose", perm=[0, 2, 1]),
        _node("MatMul", ["q_groups", "k_t"], ["raw_scores"], "scores"),
        _node("Mul", ["raw_scores", "scale"], ["scores"], "scaled"),
        # Valid slow tokens: index < slow_lengths[0].
        _node("Squeeze", ["slow_tokens", "axis0"], ["slow_tokens_scalar"], "slow_tokens_scalar"),
        _node("Range", ["zero_i", "slow_tokens_scalar", "one_i"], ["token_index"], "token_index"),
        _node("Cast", ["slow_lengths"], ["lengths64"], "lengths_cast", to=TensorProto.INT64),
        _node("Less", ["token_index", "lengths64"], ["valid"], "valid"),
        _node("Where", ["valid", "scores", "neg_inf"], ["masked"], "mask"),
        _node("Softmax", ["masked"], ["probs_raw"], "softmax", axis=-1),
        # All tokens masked (length 0) gives NaN rows from softmax: zero them, so ctx = 0.
        _node("Where", ["valid", "probs_raw", "zero_f"], ["probs"], "mask_probs"),
        _node("MatMul", ["probs", "v3"], ["ctx_groups"], "context"),
        # (Hkv, G*R, D) -> (H, R, D) -> (R, H, D) -> (R, H*D).
        _node("Concat", ["heads", "minus_one", "head_dim"], ["h_shape"], "h_shape", axis=0),
        _node("Reshape", ["ctx_groups", "h_shape"], ["ctx_hrd"], "ctx_heads"),
        _node("Transpose", ["ctx_hrd"], ["ctx_rhd"], "ctx_transpose", perm=[1, 0, 2]),
        _node("Concat", ["minus_one", "width"], ["flat_shape"], "flat_shape", axis=0),
        _node("Reshape", ["ctx_rhd", "flat_shape"], ["ctx_all"], "ctx_flat"),
        *_rows_of_no_sequence_are_zero("ctx_all", "ctx"),
        # fuse_gate = 1: residual + gate * ctx, in float32, then back to T.
        _node("Cast", ["residual"], ["res32"], "residual_cast", to=f32),
        _node("Cast", ["gate"], ["gate32"], "gate_cast", to=f32),
        _node("Mul", ["ctx", "gate32"], ["gated"], "gated"),
        _node("Add", ["res32", "gated"], ["out32"], "residual_add"),
        _node("CastLike", ["out32", "query"], ["output"], "output_cast"),
    ]


def _rows_of_no_sequence_are_zero(ctx: str, out: str) -> list[onnx.NodeProto]:
    """``out`` = ``ctx`` (R, H*D) on rows ``row_offsets[0] <= r < row_offsets[-1]``, else 0.

    A Where, not a multiply: a NaN computed from an unread row's query must not survive."""
    return [
        _const("last_i", helper.make_tensor("last_i", TensorProto.INT64, [], [-1])),
        _node("Shape", ["query"], ["rows"], "rows", start=0, end=1),
        _node("Squeeze", ["rows", "axis0"], ["rows_scalar"], "rows_scalar"),
        _node("Range", ["zero_i", "rows_scalar", "one_i"], ["row_index"], "row_index"),
        _node("Cast", ["row_offsets"], ["offsets64"], "offsets_cast", to=TensorProto.INT64),
        _node("Gather", ["offsets64", "zero_i"], ["first_row"], "first_row", axis=0),
        _node("Gather", ["offsets64", "last_i"], ["end_row"], "end_row", axis=0),
        _node("GreaterOrEqual", ["row_index", "first_row"], ["from_first"], "from_first"),
        _node("Less", ["row_index", "end_row"], ["before_end"], "before_end"),
        _node("And", ["from_first", "before_end"], ["in_rows"], "in_rows"),
        _node("Unsqueeze", ["in_rows", "minus_one"], ["in_rows_column"], "in_rows_column"),
        _node("Where", ["in_rows_column", ctx, "zero_f"], [out], "rows_of_no_sequence"),
    ]


def _scale_node() -> onnx.NodeProto:
    """Constant ``scale`` taken from the node's ``scale`` attribute (a function attribute reference)."""
    node = _node("Constant", [], ["scale"], "scale")
    node.attribute.append(
        onnx.AttributeProto(name="value_float", ref_attr_name="scale", type=onnx.AttributeProto.FLOAT)
    )
    return node


def cross_attention_function() -> onnx.FunctionProto:
    """The FunctionProto (name and domain of the contract) decomposing the custom op."""
    schema = op_schema()
    return helper.make_function(
        domain=schema["domain"],
        fname=schema["name"],
        inputs=[spec["name"] for spec in schema["inputs"]],
        outputs=[spec["name"] for spec in schema["outputs"]],
        nodes=_body(),
        opset_imports=[helper.make_opsetid("", FUNCTION_OPSET)],
        attributes=[spec["name"] for spec in schema["attributes"]],
        doc_string=__doc__,
    )


def add_cross_attention_function(model: onnx.ModelProto) -> bool:
    """Add the function to ``model`` if it has the custom node and lacks the function.

    Returns True when the model contains the custom node. Also makes sure the contract domain
    is imported at the contract version.
    """
    schema = op_schema()
    key = (schema["domain"], schema["name"])
    if not any((n.domain, n.op_type) == key for n in model.graph.node):
        return False
    if not any((f.domain, f.name) == key for f in model.functions):
        model.functions.append(cross_attention_function())
    if not any(o.domain == schema["domain"] for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(schema["domain"], int(schema["op_version"])))
    return True
