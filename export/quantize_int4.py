"""INT4 weight-only quantization of the decoder: packing, blockwise quantizers, the ONNX rewrite.

Scheme: symmetric INT4 (-8..7), one scale per group of ``block`` consecutive input channels
and output channel, ``scale = amax / 7`` (so +amax maps to 7 and -amax to -7; -8 is used
only by rounding), no zero point. The default group is 128 along the input dim (``K`` of a
``MatMul`` weight ``[K, N]``, ``in_features`` of a Linear weight ``[N, K]``).

Group size when ``K`` is not a multiple of 128: the largest divisor of ``K`` that is at most
128 (``block_size_for``); for ``K < 128`` that is ``K`` itself (one group spans the whole
input dim, e.g. the tiny test models with hidden 64). Padding ``K`` is not an option: the
activations would need the same padding. TensorRT infers the block size as ``K / rows of the
scale`` and rejects a non-integer block (onnx-tensorrt 10.1 ``QuantDequantLinearHelper``), so
ONNX's ragged last block (``ceil(K / block)`` scale rows) cannot be used; a ``K`` whose
largest such divisor is below 16 is refused. Qwen2-7B's inputs (3584 = 28 x 128,
18944 = 148 x 128) all use 128.

ONNX form (what TensorRT's parser takes for weight-only INT4, and ONNX Runtime runs):

    W_q (INT4 [K, N], external data, 2 values per byte) --+
    scale ([K / block, N], activation dtype) -------------+-> DequantizeLinear(axis=0,
                                                              block_size=block) -> MatMul

``DequantizeLinear`` with ``block_size`` and INT4 needs opset 21, so the rewritten decoder
graphs move from opset 17 to 21 (:func:`upgrade_opset`: ``ReduceMean`` axes become an input;
every other op of these graphs only gained types). TensorRT also needs the last dim (``N``)
even for INT4 and strictly positive scales; odd-``N`` weights (e.g. the 1-output gate of
the hybrid layers, a ``Gemm`` anyway) stay in the activation dtype. The LM head stays too
unless asked (as in AWQ and ModelOpt's defaults): it is the most sensitive matrix.

ONNX Runtime (CPU) fuses ``DequantizeLinear -> MatMul`` into ``MatMulNBits`` and, by
default, quantizes the activations to int8 for it (``accuracy_level`` 4). Set the session
config entry ``session.qdq_matmulnbits_accuracy_level`` to ``"1"`` (float32 activations) for
weight-only numerics comparable with TensorRT's half-precision GEMMs.

The ``--precision int4-awq`` export that uses these pieces is :mod:`slowfast_trt.export.int4_export`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from slowfast_trt.export.onnx_io import DataFile
from slowfast_trt.models.slowfast import specs as S

DEFAULT_BLOCK = 128
MIN_BLOCK = 16
INT4_OPSET = 21
INT4_IR_VERSION = 10  # INT4 tensors and opset 21 need IR version 10 (ONNX 1.16)
QMIN, QMAX = -8, 7
REPORT_FILE = "quantization.json"
# Decoder weights quantized by default: the seven projections of every layer.
DEFAULT_PATTERN = re.compile(r"layers\.\d+\.(q_proj|k_proj|v_proj|o_proj|mlp\.gate_proj|mlp\.up_proj|mlp\.down_proj)\.")
LM_HEAD_PATTERN = re.compile(r"lm_head\.")
# Ops of our decoder graphs whose opset-21 schema differs from opset 17 only by added types or
# attributes with the old behaviour as default (Cast/CastLike: saturate, float8 only; Equal:
# strings; ScatterElements: max/min reductions; Pad: axes, wrap mode; Split: num_outputs).
_TYPE_ONLY_UPGRADES = frozenset({
    "Cast", "CastLike", "Constant", "ConstantOfShape", "Equal", "Identity", "Reshape", "Shape", "Size",
    "Squeeze", "Unsqueeze", "Transpose", "Flatten", "ScatterElements", "Pad", "Split", "DequantizeLinear",
    "QuantizeLinear", "If", "Loop", "Scan",
})
_REDUCE_AXES_INPUT = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
})  # opset 18 moved ``axes`` from an attribute to an input (ReduceSum did so at 13)


# ---- numerics ---------------------------------------------------------------------------------


def block_size_for(k: int, preferred: int = DEFAULT_BLOCK) -> int:
    """The group size along an input dim of ``k``: ``preferred`` if it divides ``k``, else the
    largest divisor of ``k`` below it (``k`` itself when ``k < preferred``)."""
    if k < 1:
        raise ValueError(f"input dim must be >= 1, got {k}")
    block = next(d for d in range(min(preferred, k), 0, -1) if k % d == 0)
    if block < min(MIN_BLOCK, k):
        raise ValueError(
            f"input dim {k} has no divisor in [{MIN_BLOCK}, {preferred}]: TensorRT needs the INT4 block to divide it"
        )
    return block


def quantize_blockwise(weight: torch.Tensor, block: int, scale_dtype: torch.dtype = torch.float32):
    """``weight`` [K, N] -> (q int8 [K, N] in -8..7, scale [K/block, N] in ``scale_dtype``).

    The scale is rounded to ``scale_dtype`` before ``q`` is computed, so that
    ``q * scale`` is exactly what a dequantizer with the stored scale produces.
    """
    k, n = weight.shape
    if k % block:
        raise ValueError(f"block {block} does not divide the input dim {k}")
    w = weight.detach().to(torch.float32).reshape(k // block, block, n)
    amax = w.abs().amax(dim=1)
    scale = (amax / QMAX).to(scale_dtype)
    tiny = torch.finfo(scale_dtype).tiny
    scale = torch.where(scale > 0, scale, torch.full_like(scale, tiny))  # TensorRT needs scales > 0
    q = torch.clamp(torch.round(w / scale.to(torch.float32)[:, None, :]), QMIN, QMAX)
    return q.to(torch.int8).reshape(k, n), scale


def dequantize_blockwise(q: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise` (float32 [K, N])."""
    return q.to(torch.float32) * scale.to(torch.float32).repeat_interleave(block, dim=0)


def fake_quantize_linear(weight: torch.Tensor, block: int) -> torch.Tensor:
    """A Linear weight [N, K] quantized and dequantized along K (float32 [N, K])."""
    q, scale = quantize_blockwise(weight.t(), block)
    return dequantize_blockwise(q, scale, block).t()


def pack_int4(values: np.ndarray) -> np.ndarray:
    """int values in -8..7 (any shape, row-major) -> uint8, two per byte, element 2i in the low
    nibble and 2i+1 in the high one (ONNX INT4 raw data layout); an odd count pads a zero nibble."""
    flat = np.asarray(values).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < QMIN or flat.max() > QMAX):
        raise ValueError(f"INT4 values must lie in [{QMIN}, {QMAX}], got [{flat.min()}, {flat.max()}]")
    nibbles = (flat & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: the first ``count`` signed values as int8."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != (count + 1) // 2:
        raise ValueError(f"{packed.size} bytes hold {2 * packed.size} INT4 values, expected {count}")
    nibbles = np.empty(packed.size * 2, np.uint8)
    nibbles[0::2], nibbles[1::2] = packed & 0x0F, packed >> 4
    return ((nibbles[:count].astype(np.int16) ^ 8) - 8).astype(np.int8)  # sign-extend 4 bits


# ---- the opset upgrade ------------------------------------------------------------------------


def _upgrade_nodes(nodes, old: int, new: int, where: str) -> list:
    out = []
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            out.append(node)
            continue
        before = onnx.defs.get_schema(node.op_type, old).since_version
        after = onnx.defs.get_schema(node.op_type, new).since_version
        if node.op_type in _REDUCE_AXES_INPUT and before < 18 <= after:
            axes = [a for a in node.attribute if a.name == "axes"]
            if axes:
                name = f"{node.output[0]}_axes"
                out.append(helper.make_node("Constant", [], [name], name=f"{node.name}_axes",
                                            value=numpy_helper.from_array(np.array(axes[0].ints, np.int64))))
                node.attribute.remove(axes[0])
                node.input.append(name)
        elif before != after and node.op_type not in _TYPE_ONLY_UPGRADES:
            raise ValueError(f"{where}: {node.op_type} changed between opset {old} and {new}; add its upgrade")
        out.append(node)
    return out


def upgrade_opset(model: onnx.ModelProto, version: int = INT4_OPSET) -> None:
    """Move the default-domain opset of ``model`` and its local functions to ``version`` in place.

    ``onnx.version_converter`` drops model-local functions (the cross-attention function ONNX
    Runtime runs), so the few changes our graphs need are made here; an op whose schema
    changed in another way raises ``ValueError``.
    """
    for owner in [model, *model.functions]:
        entry = next((o for o in owner.opset_import if o.domain in ("", "ai.onnx")), None)
        if entry is None or entry.version == version:
            continue
        nodes = owner.graph.node if owner is model else owner.node
        upgraded = _upgrade_nodes(list(nodes), entry.version, version, getattr(owner, "name", "graph"))
        del nodes[:]
        nodes.extend(upgraded)
        entry.version = version
    model.ir_version = max(model.ir_version, INT4_IR_VERSION)


# ---- the ONNX rewrite -------------------------------------------------------------------------


@dataclass
class QuantizedWeight:
    name: str
    k: int
    n: int
    block: int
    source_bytes: int
    packed_bytes: int


@dataclass
class Int4Report:
    """What :func:`quantize_decoder_onnx` did (written to ``quantization.json``)."""

    block: int
    scale_dtype: str
    data_file: str
    bytes_before: int
    bytes_after: int
    quantized: list[QuantizedWeight] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # weight -> why it stays unquantized
    graphs: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def default_selector(include_lm_head: bool = False) -> Callable[[str], bool]:
    """Which MatMul weights to quantize, by initializer name."""
    def select(name: str) -> bool:
        return bool(DEFAULT_PATTERN.search(name) or (include_lm_head and LM_HEAD_PATTERN.search(name)))

    return select



def _add(writer: DataFile, name: str, data_type: int, dims, raw) -> TensorProto:
    """One external initializer from raw bytes; a name already written is reused, not written again."""
    return writer.add(name, data_type, tuple(dims), lambda: [np.frombuffer(raw, dtype=np.uint8)], reuse=True)


def _read_initializer(tensor: TensorProto, source: np.memmap | None) -> np.ndarray:
    if not external_data_helper.uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    info = external_data_helper.ExternalDataInfo(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    raw = source[info.offset : info.offset + info.length]
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims))


def _targets(graph: onnx.GraphProto, select, block: int, report: Int4Report) -> dict[str, int]:
    """Initializer name -> block for every MatMul weight to quantize (checked for every use)."""
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in inits:
                users.setdefault(name, []).append((node.op_type, index))
    targets = {}
    for name, uses in users.items():
        if not any(op == "MatMul" and i == 1 for op, i in uses) or not select(name):
            continue
        dims = list(inits[name].dims)
        reason = None
        if any(not (op == "MatMul" and i == 1) for op, i in uses):
            reason = "also read by a node other than a MatMul weight input"
        elif len(dims) != 2:
            reason = f"rank {len(dims)} (2-D weights only)"
        elif dims[1] % 2:
            reason = f"odd output dim {dims[1]} (TensorRT INT4 needs an even last dim)"
        else:
            try:
                targets[name] = block_size_for(dims[0], block)
            except ValueError as exc:
                reason = str(exc)
        if reason:
            report.kept[name] = reason
    return targets


def _rewrite_graph(graph, targets, source, writer, scale_dtype, report: Int4Report, done: dict) -> None:
    """Replace the ``targets`` of ``graph`` by INT4 + scale; copy every other external tensor.

    ``done`` maps weights already written (by a graph sharing the data file) to their new
    tensors, so each is quantized and stored once."""
    replaced, new_inits = {}, []
    for tensor in graph.initializer:
        name = tensor.name
        if name in targets:
            if name not in done:
                done[name] = _quantize_initializer(tensor, targets[name], source, writer, scale_dtype, report)
            q_tensor, s_tensor, block = done[name]
            new_inits += [q_tensor, s_tensor]
            replaced[name] = (q_tensor.name, s_tensor.name, block)
        elif external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            raw = memoryview(source[info.offset : info.offset + info.length])
            new_inits.append(_add(writer, name, tensor.data_type, tensor.dims, raw))
        else:
            new_inits.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    _insert_dequantize(graph, replaced)


def _quantize_initializer(tensor, block, source, writer, scale_dtype, report: Int4Report):
    k, n = tensor.dims
    array = _read_initializer(tensor, source)
    q, scale = quantize_blockwise(torch.from_numpy(np.array(array, dtype=np.float32)), block, scale_dtype)
    packed = pack_int4(q.numpy())
    scale_np = scale.numpy()
    q_tensor = _add(writer, f"{tensor.name}.int4", TensorProto.INT4, (k, n), packed.tobytes())
    s_tensor = _add(writer, f"{tensor.name}.scale", helper.np_dtype_to_tensor_dtype(scale_np.dtype), scale_np.shape,
                          scale_np.tobytes())
    report.quantized.append(QuantizedWeight(tensor.name, k, n, block, array.nbytes, packed.nbytes + scale_np.nbytes))
    return q_tensor, s_tensor, block


def _insert_dequantize(graph: onnx.GraphProto, replaced: dict) -> None:
    """One DequantizeLinear per quantized weight, placed before its first MatMul."""
    nodes, done = [], set()
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in replaced:
            weight = node.input[1]
            q_name, s_name, block = replaced[weight]
            output = f"{weight}.dequantized"
            if weight not in done:
                scope = node.name.rsplit("/", 1)[0] if "/" in node.name else ""
                nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [output],
                                              name=f"{scope}/DequantizeLinear", axis=0, block_size=block))
                done.add(weight)
            node.input[1] = output
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def quantize_decoder_onnx(
    directory: str | Path,
    files: Sequence[str] = (f"{S.DECODER}.onnx", f"{S.DECODER_NOCROSS}.onnx"),
    block: int = DEFAULT_BLOCK,
    select: Callable[[str], bool] | None = None,
    scale_dtype: str | None = None,
) -> Int4Report:
    """Rewrite the decoder graphs of an export folder in place to INT4 weight-only.

    ``files`` share one external-data file (the first graph's); it is rewritten once, with
    every quantized weight as INT4 + scale and all other tensors copied. ``scale_dtype``
    defaults to the dtype of the weights (the activation dtype). Weights are read one at a
    time from a memory map. Returns the report, also written to ``quantization.json``.
    """
    directory = Path(directory)
    paths = [directory / f for f in files if (directory / f).is_file()]
    if not paths:
        raise ValueError(f"{directory}: none of {', '.join(files)} found")
    models = [onnx.load(str(p), load_external_data=False) for p in paths]
    locations = {e.value for m in models for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    if len(locations) > 1:
        raise ValueError(f"{directory}: the decoder graphs use several data files {sorted(locations)}; expected one")
    location = locations.pop() if locations else f"{paths[0].name}.data"
    select = select or default_selector()
    report = Int4Report(block, scale_dtype or "", location, 0, 0, graphs=[p.name for p in paths])
    data_path = directory / location
    source = np.memmap(data_path, dtype=np.uint8, mode="r") if data_path.is_file() else None
    report.bytes_before = data_path.stat().st_size if source is not None else 0
    tmp = directory / f".{location}.int4-tmp"
    writer = DataFile(tmp, share=None, location=location)
    done: dict = {}
    try:
        for model in models:
            targets = _targets(model.graph, select, block, report)
            dtype = scale_dtype or _weight_dtype(model.graph, targets)
            report.scale_dtype = dtype
            _rewrite_graph(model.graph, targets, source, writer, getattr(torch, dtype), report, done)
            upgrade_opset(model)
        writer.close()
        del source
        os.replace(tmp, data_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    for model, path in zip(models, paths):
        path.write_bytes(model.SerializeToString())  # the external data is already in place
        onnx.checker.check_model(str(path))
    report.bytes_after = data_path.stat().st_size
    (directory / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return report


def _weight_dtype(graph: onnx.GraphProto, targets: dict) -> str:
    types = {t.data_type for t in graph.initializer if t.name in targets}
    if len(types) > 1:
        raise ValueError(f"quantized weights have mixed dtypes {sorted(types)}")
    if not types:
        return "float32"
    return np.dtype(helper.tensor_dtype_to_np_dtype(types.pop())).name
