"""TensorRT 10.3 compatibility lint for the exported ONNX graphs (run it on the stripped files).

``lint_model(path)`` returns one line per problem; an empty list means the TensorRT 10.3 ONNX
parser should take the graph with our plugin library loaded. Weights are never read.

| rule            | a problem when                                                                  |
|-----------------|---------------------------------------------------------------------------------|
| opset           | the default-domain opset is outside 9..20 (``trt_onnx_ops.json``)               |
| operators       | a node's op is not in the supported list; a node of another domain than ours   |
| custom op       | a node of our domain is not the op of ``contract.json``, misses or    |
|                 | mistypes an attribute, has a wrong input count, or plugin version/namespace     |
|                 | differ from the contract                                                        |
| dtypes          | an op's data input has a type outside the op's supported types (e.g. int64 or   |
|                 | double into MatMul), or a plugin input the contract types int32 is not int32    |
| constant inputs | an input the parser needs as a build-time constant (``axes`` of Squeeze,        |
|                 | Unsqueeze, Reduce*, Pad; ``axis`` of CumSum) is computed at run time           |
| int64 I/O       | an int64 graph input is not one of ``INT64_INPUTS``, or a graph output is int64 |
| dynamic dims    | a graph input has no shape, or a dim that is neither a number nor a named       |
|                 | symbol (an exporter's generated ``s0``/``unk__3``/expression names count as     |
|                 | unnamed): the TensorRT build needs one optimization-profile range per symbol,   |
|                 | and with ``profile_dims`` every symbol must have a range there                  |
| functions       | any model-local function is left (TensorRT 10.3 inlines a function in our      |
|                 | domain instead of calling the plugin: run ``strip_functions`` first)            |

The int64 rule. TensorRT >= 9 parses int64 natively (onnx-tensorrt changelog, 9.0 EA), so
nothing is narrowed silently by the parser; what matters is where int64 would meet a 32-bit
consumer. Our plugin reads ``slow_lengths`` and ``row_offsets`` as int32 (the op contract),
the runtime binds int32 for every integer input except the index inputs below, and most
compute ops (MatMul, Conv, Softmax, ...) have no int64 kernels. Int64 graph inputs are
therefore allowed only for token ids, positions and the flat indices of attending rows,
whose values (< vocab size, < max_seq_len, < batch * max_seq_len) always fit int32; shape
arithmetic inside the graph (Shape, Gather, Concat, Range... on int64) is fine.

    slowfast-trt-lint FILE.onnx...                  # exit 1 when there are problems
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto

from slowfast_trt.ops.cross_attention.contract import op_schema

OPS_PATH = Path(__file__).with_name("trt_onnx_ops.json")
INT64_INPUTS = frozenset({"input_ids", "position_ids", "past_length", "cross_rows"})
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Names exporters generate for dims nobody named: torch.export symbols (s0, s12), ONNX shape
# inference (unk__3), and symbolic expressions ("s0 + 1", "2*s1").
_GENERATED_DIM = re.compile(r"^(s\d+|unk__\d+|sym_size_int_\d+)$|[^A-Za-z0-9_]")
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL",
    TensorProto.INT4: "INT4", TensorProto.FLOAT8E4M3FN: "FP8",
}
# The data input whose type the "Supported Types" column describes, where it is not input 0.
_DATA_INPUT = {"Where": 1}


@lru_cache(maxsize=1)
def trt_ops() -> dict:
    """The TensorRT 10.3 ONNX operator table (``trt_onnx_ops.json``, source named inside)."""
    return json.loads(OPS_PATH.read_text(encoding="utf-8"))


def _op_contract() -> dict:
    return op_schema()


def _load(model: str | Path | ModelProto) -> ModelProto:
    if isinstance(model, ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _walk(graph: GraphProto, scope: str = "") -> Iterator[tuple[str, NodeProto, GraphProto]]:
    """Every node, subgraph bodies (If/Loop/Scan) included, with a readable location."""
    for node in graph.node:
        where = f"{scope}{node.name or node.op_type}"
        yield where, node, graph
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                yield from _walk(sub, f"{where}/{attr.name}/")


def _inferred_types(model: ModelProto) -> dict[str, int]:
    """Element type of every tensor name that declares or infers one."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # an inference bug or a >2 GB in-memory proto: use what is declared
        inferred = model
    types: dict[str, int] = {}

    def collect(graph: GraphProto) -> None:
        for init in graph.initializer:
            types[init.name] = init.data_type
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                for attr in node.attribute:
                    if attr.name == "value":
                        types[node.output[0]] = attr.t.data_type

    collect(inferred.graph)
    for _, node, _ in _walk(inferred.graph):
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                collect(sub)
    return types


def _constant_names(model: ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    for _, node, graph in _walk(model.graph):
        names.update(i.name for i in graph.initializer)
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            names.update(node.output)
    return names


def _has_int4_weights(model: ModelProto) -> bool:
    int4 = {TensorProto.INT4, TensorProto.UINT4}
    return any(init.data_type in int4 for init in model.graph.initializer)


def _check_opsets(model: ModelProto, table: dict) -> list[str]:
    problems = []
    # INT4 only exists from opset 21 on; the same parser that lists opset 20 as its maximum
    # imports blockwise INT4 DequantizeLinear (its operator table lists INT4), so a weight-only
    # INT4 model may import opset 21. Every op in it is still checked against the table.
    opset_max = table["opset_max"] + (1 if _has_int4_weights(model) else 0)
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS and not table["opset_min"] <= imp.version <= opset_max:
            problems.append(
                f"opset {imp.version}: TensorRT {table['tensorrt_version']} supports ONNX opsets "
                f"{table['opset_min']}..{table['opset_max']}; export with an opset in that range"
            )
    return problems


def _check_functions(model: ModelProto, domain: str) -> list[str]:
    problems = []
    for f in model.functions:
        if f.domain == domain:
            problems.append(
                f"local function {f.domain}.{f.name}: TensorRT 10.3 inlines it instead of calling the plugin; "
                "remove it with slowfast_trt.export.strip_functions"
            )
        else:
            problems.append(f"local function {f.domain or 'ai.onnx'}.{f.name}: inline it before the TensorRT build")
    return problems


def _dim_problem(dim) -> str | None:
    if dim.HasField("dim_value"):
        return None if dim.dim_value > 0 else f"dim {dim.dim_value}"
    if not dim.HasField("dim_param") or not dim.dim_param:
        return "an unnamed dynamic dim"
    if _GENERATED_DIM.search(dim.dim_param):
        return f"the generated dim name {dim.dim_param!r}"
    return None


def _check_io(model: ModelProto, int64_inputs: Iterable[str], profile_dims: Iterable[str] | None) -> list[str]:
    problems = []
    ranged = None if profile_dims is None else set(profile_dims)
    initializers = {i.name for i in model.graph.initializer}
    allowed = set(int64_inputs)
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.INT64 and vi.name not in allowed:
            problems.append(
                f"input {vi.name}: int64; only {', '.join(sorted(allowed))} may be int64 (their values fit int32), "
                "every other integer input is int32"
            )
        if not tt.HasField("shape"):
            problems.append(f"input {vi.name}: no shape (TensorRT needs the rank and a profile per dynamic dim)")
            continue
        for axis, dim in enumerate(tt.shape.dim):
            issue = _dim_problem(dim)
            if issue:
                problems.append(
                    f"input {vi.name}: axis {axis} is {issue}; name every dynamic dim for its optimization profile"
                )
            elif ranged is not None and dim.dim_param and dim.dim_param not in ranged:
                problems.append(
                    f"input {vi.name}: dim {dim.dim_param!r} has no (min, max) range for the optimization profile"
                )
    for vi in model.graph.output:
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            problems.append(f"output {vi.name}: int64 (outputs are float or int32)")
    return problems


def _check_custom_node(where: str, node: NodeProto, types: dict[str, int]) -> list[str]:
    contract = _op_contract()
    if node.op_type != contract["name"]:
        return [f"node {where}: {node.domain}.{node.op_type} is not an op of our plugin (only {contract['name']})"]
    problems = []
    attrs = {a.name: a for a in node.attribute}
    kinds = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}
    for spec in contract["attributes"]:
        attr = attrs.get(spec["name"])
        if attr is None:
            problems.append(f"node {where}: attribute {spec['name']} missing (the plugin needs every contract attribute)")
        elif attr.type != kinds[spec["type"]]:
            problems.append(f"node {where}: attribute {spec['name']} must be {spec['type']}")
    for key in ("plugin_version", "plugin_namespace"):
        if key in attrs and attrs[key].s.decode() != contract[key]:
            problems.append(f"node {where}: {key} {attrs[key].s.decode()!r} differs from the contract's {contract[key]!r}")
    inputs = contract["inputs"]
    required = sum(1 for i in inputs if not i.get("optional"))
    if not required <= len(node.input) <= len(inputs):
        problems.append(f"node {where}: {len(node.input)} inputs, the contract has {required}..{len(inputs)}")
    for spec, name in zip(inputs, node.input):
        if spec["dtype"] == "int32" and name and types.get(name, TensorProto.INT32) != TensorProto.INT32:
            got = _TYPE_NAMES.get(types[name], str(types[name]))
            problems.append(f"node {where}: input {spec['name']} ({name}) is {got}; the plugin reads int32")
    return problems


def _check_node(where, node, types, constants, table, domain) -> list[str]:
    if node.domain == domain:
        return _check_custom_node(where, node, types)
    if node.domain not in _DEFAULT_DOMAINS:
        return [f"node {where}: op {node.domain}.{node.op_type} has no TensorRT importer or plugin"]
    entry = table["supported"].get(node.op_type)
    if entry is None:
        return [f"node {where}: op {node.op_type} is not supported by the TensorRT {table['tensorrt_version']} ONNX parser"]
    problems = []
    index = _DATA_INPUT.get(node.op_type, 0)
    if entry["types"] and index < len(node.input) and node.input[index] in types:
        got = _TYPE_NAMES.get(types[node.input[index]], onnx.TensorProto.DataType.Name(types[node.input[index]]))
        if got not in entry["types"]:
            problems.append(f"node {where}: {node.op_type} on {got} (TensorRT supports {', '.join(entry['types'])})")
    for index in table["constant_inputs"].get(node.op_type, []):
        if index < len(node.input) and node.input[index] and node.input[index] not in constants:
            problems.append(f"node {where}: input {index} of {node.op_type} must be a constant (initializer or Constant)")
    return problems


def lint_model(
    model: str | Path | ModelProto,
    int64_inputs: Iterable[str] = INT64_INPUTS,
    domain: str | None = None,
    profile_dims: Iterable[str] | None = None,
) -> list[str]:
    """Problems that would stop or silently change a TensorRT 10.3 build of ``model`` (see module table).

    ``profile_dims``: the dim names that have a (min, max) range (``SubgraphSpec.dims``); when
    given, a named input dim outside it is a problem too.
    """
    proto = _load(model)
    table = trt_ops()
    domain = domain or _op_contract()["domain"]
    problems = _check_opsets(proto, table) + _check_functions(proto, domain) + _check_io(proto, int64_inputs, profile_dims)
    types = _inferred_types(proto)
    constants = _constant_names(proto)
    for where, node, _ in _walk(proto.graph):
        problems.extend(_check_node(where, node, types, constants, table, domain))
    return problems
