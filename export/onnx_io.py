"""Writing exported graphs: TorchScript export, node names, one external-data file per graph.

Memory: ``torch.onnx.export`` would serialise every weight into the proto (several full
copies at once: the C++ proto, its serialised bytes, constant-folded transposes of every
Linear weight). Here every tensor of ``INLINE_BYTES`` or more enters the trace as an extra
graph input instead, for every graph size, so torch's proto holds only the graph and small
constants; afterwards each such input becomes an external initializer whose bytes are written
to the data file block by block (:data:`BLOCK_BYTES`), never as a whole extra copy. The bytes
come from the module's own tensor, or, for a tensor that is only a shape stub during the trace
(``streams``: the exporter reading a checkpoint part by part), from a row-block stream such as
:meth:`slowfast_trt.models.slowfast.checkpoint.CheckpointWeights.row_blocks`. A weight only read through
``Transpose(perm=[1, 0])`` (Linear on 3-D input) is written transposed and the Transpose
dropped, as constant folding would have done: from a loaded tensor in column blocks, from a
stream by scattering each row block into the columns of its region. No weight is ever copied
whole.

``decoder_nocross.onnx`` shares ``decoder.onnx.data``: initializers with the same name, dtype
and shape point at the regions already written (and are not read again). Anything that
rewrites such a proto must keep its external-data references
(``onnx.load(..., load_external_data=False)``, then ``onnx.save``).
"""

from __future__ import annotations

import mmap
import os
import tempfile
import warnings
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import onnx
import torch
from onnx import external_data_helper, helper, numpy_helper
from torch import nn

from slowfast_trt.dtypes import onnx_type
from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.ops.cross_attention.custom_op import custom_opsets, register_onnx_symbolic
from slowfast_trt.ops.cross_attention.onnx_function import FUNCTION_OPSET, add_cross_attention_function

OPSET = FUNCTION_OPSET  # 17: LayerNormalization is native; TensorRT 10 parses up to 20
INLINE_BYTES = 1024  # smaller tensors stay in the proto (norm biases of tiny models, constants)
_ALIGN = 4096  # large tensors start on a page boundary (mmap-friendly)
BLOCK_BYTES = 16 << 20  # what one write to a data file holds at most (besides the source tensor)
Blocks = Callable[[], Iterable["torch.Tensor | np.ndarray"]]


class ExportGraph(nn.Module):
    """Base of the exported wrappers. ``compute(*inputs)`` is the graph; during export the
    tensors named in ``weight_inputs`` arrive as extra trailing arguments and stand in for the
    module's own parameters/buffers, so the trace reads them as graph inputs."""

    weight_inputs: tuple[str, ...] = ()

    def compute(self, *inputs):
        raise NotImplementedError

    def forward(self, *args):
        count = len(args) - len(self.weight_inputs)
        saved = []
        try:
            for name, tensor in zip(self.weight_inputs, args[count:]):
                owner, _, attr = name.rpartition(".")
                module = self.get_submodule(owner)
                store = module._parameters if attr in module._parameters else module._buffers
                saved.append((store, attr, store[attr]))
                store[attr] = tensor
            return self.compute(*args[:count])
        finally:
            for store, attr, original in reversed(saved):
                store[attr] = original


def large_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers of ``module`` of at least INLINE_BYTES (shared ones once)."""
    named = chain(module.named_parameters(), module.named_buffers())
    return {n: t for n, t in named if t.numel() * t.element_size() >= INLINE_BYTES}


def _export(module: ExportGraph, args, weights, path: Path, input_names, output_names, dynamic_axes, custom_op) -> None:
    register_onnx_symbolic(OPSET)
    module.weight_inputs = tuple(weights)
    # Fresh aliases (no copy): the trace must see graph inputs, never the module's own
    # parameters, which torch would serialise into its proto as initializers.
    inputs = tuple(t.detach() for t in weights.values())
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript);
            # trace warnings about Python-side shape logic are expected for the static branches.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(args) + inputs,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(input_names) + list(weights),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                custom_opsets=custom_opsets() if custom_op else None,
                do_constant_folding=True,
            )
    finally:
        module.weight_inputs = ()


def name_cross_attention_nodes(model: onnx.ModelProto) -> int:
    """``/decoder/layers.3/SlowFastCrossAttention`` -> ``/decoder/layers.3/cross_attn/SlowFastCrossAttention``."""
    schema = op_schema()
    count = 0
    for node in model.graph.node:
        if (node.domain, node.op_type) == (schema["domain"], schema["name"]):
            scope = node.name.rsplit("/", 1)[0] if "/" in node.name else ""
            node.name = f"{scope}/cross_attn/{schema['name']}"
            count += 1
    return count


def set_io_shapes(model: onnx.ModelProto, shapes: dict[str, tuple]) -> None:
    """Give graph inputs/outputs the spec's dims (the exporter invents names like ``MatMullogits_dim_0``)."""
    for value in chain(model.graph.input, model.graph.output):
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[value.name]:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = int(size)


def _external(name: str, data_type: int, dims, location: str, offset: int, length: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    return tensor


class DataFile:
    """Writes tensors to one external-data file (appending to it when it is shared); ``regions``
    maps names already in it. Writes go to explicit offsets (``os.pwrite``)."""

    def __init__(self, path: Path, share: Path | None, location: str | None = None):
        # ``location``: the file name the graphs record (default ``path.name``; a file written
        # under a temporary name and renamed into place records its final name).
        self.path, self.regions, self.location = path, {}, location or path.name
        if share is None:
            path.unlink(missing_ok=True)
        else:
            for tensor in onnx.load(str(share), load_external_data=False).graph.initializer:
                if external_data_helper.uses_external_data(tensor):
                    info = external_data_helper.ExternalDataInfo(tensor)
                    self.regions[tensor.name] = (tensor.data_type, tuple(tensor.dims), info.offset, info.length)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.end = os.fstat(self.fd).st_size

    def close(self) -> None:
        """Truncate to the last region and close; a second call does nothing."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, self.end)  # a region's alignment gap before it is a hole: zeros
        os.close(self.fd)
        self.fd = None

    def _write(self, data: memoryview, offset: int) -> None:
        while len(data):
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def add(
        self, name: str, data_type: int, shape, blocks: Blocks, reuse: bool, transposed_rows: bool = False
    ) -> onnx.TensorProto:
        """An external initializer for ``name``; ``blocks()`` (consecutive pieces of the
        row-major bytes, tensors or arrays) is only called when no reusable region exists.

        ``transposed_rows``: ``shape`` is (C, R) and ``blocks()`` gives row blocks of the
        (R, C) matrix it is the transpose of; each block is scattered to its column of the
        region (C writes per block), so the matrix is never held whole.
        """
        shape = tuple(int(d) for d in shape)
        region = self.regions.get(name) if reuse else None
        if region is None or region[:2] != (data_type, shape):
            itemsize = _itemsize(data_type)
            length = _nbytes(data_type, shape)
            offset = self.end + (-self.end % _ALIGN)
            written = 0
            for block in blocks():
                if transposed_rows:
                    rows = block.shape[0]
                    raw, segment = as_bytes(_mapped_copy(block.t())), rows * itemsize
                    first = offset + written // shape[0]  # column of the first row of this block
                    for j in range(shape[0]):
                        self._write(raw[j * segment : (j + 1) * segment], first + j * shape[1] * itemsize)
                    written += len(raw)
                else:
                    raw = as_bytes(block)
                    self._write(raw, offset + written)
                    written += len(raw)
                del block, raw  # freed before the source makes its next block
            if written != length:
                raise RuntimeError(f"{name}: wrote {written} bytes, expected {length} for {shape}")
            self.end = max(self.end, offset + length)
            region = (data_type, shape, offset, length)
            self.regions[name] = region
        return _external(name, data_type, shape, self.location, region[2], region[3])


def _mapped_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy in its own anonymous mapping, returned to the OS when freed (a
    malloc'd block of this size would stay in glibc's heap)."""
    if tensor.numel() == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):
        return tensor.contiguous()
    buffer = mmap.mmap(-1, tensor.numel() * tensor.element_size(), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buffer, dtype=tensor.dtype).view(tensor.shape).copy_(tensor)


def _itemsize(data_type: int) -> int:
    if data_type in _PACKED_4BIT:
        return 1  # two values a byte; only whole-row blocks are written
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


_PACKED_4BIT = frozenset({onnx.TensorProto.INT4, onnx.TensorProto.UINT4})


def _nbytes(data_type: int, shape) -> int:
    count = int(np.prod(shape, dtype=np.int64))
    return (count + 1) // 2 if data_type in _PACKED_4BIT else count * _itemsize(data_type)


def as_bytes(block) -> memoryview:
    """The bytes of a tensor or array block (contiguous; a view where it already is)."""
    if isinstance(block, torch.Tensor):
        block = block.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8))


def row_blocks(tensor: torch.Tensor, max_bytes: int | None = None) -> Iterable[torch.Tensor]:
    """``tensor`` as views of consecutive dim-0 blocks of at most about ``max_bytes``."""
    tensor = tensor.detach()
    if tensor.dim() == 0:
        yield tensor
        return
    row_bytes = max(1, tensor[0].numel() * tensor.element_size())
    step = max(1, (max_bytes or BLOCK_BYTES) // row_bytes)
    for start in range(0, tensor.shape[0], step):
        yield tensor[start : start + step]


def transposed_blocks(matrix: torch.Tensor, max_bytes: int | None = None) -> Iterable[torch.Tensor]:
    """The rows of ``matrix.t()`` in blocks: ``matrix[:, a:b].t()``, one contiguous block at a time."""
    matrix = matrix.detach()
    step = max(1, (max_bytes or BLOCK_BYTES) // max(1, matrix.shape[0] * matrix.element_size()))
    for start in range(0, matrix.shape[1], step):
        yield _mapped_copy(matrix[:, start : start + step].t())


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)


def _weights_to_initializers(
    model: onnx.ModelProto, weights: dict[str, torch.Tensor], data: DataFile, streams: Mapping[str, Blocks]
) -> None:
    """Turn the weight graph inputs into external initializers (Transpose-only weights pre-transposed).

    A weight's bytes come from ``streams[name]()`` (row blocks) when given, else from the tensor.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped = []
    for name, tensor in weights.items():
        users = consumers.get(name, [])
        if not users:
            continue  # not part of this graph (e.g. the slow K/V projection in the decoder)
        shape, data_type = tuple(tensor.shape), onnx_type(tensor.dtype)
        source = streams.get(name)
        if source is None and tensor.numel() > 1 and 0 in tensor.stride():
            raise ValueError(f"{name}: a shape stub (stride 0) with no stream for its bytes")
        transposed = len(shape) == 2 and all(n.op_type == "Transpose" and _perm(n) == [1, 0] for n in users)
        if transposed:
            initializer_name, shape = f"{name}.T", shape[::-1]
            for node in users:
                dropped.append(node)
                for user in consumers.get(node.output[0], []):
                    user.input[:] = [initializer_name if i == node.output[0] else i for i in user.input]

            # A loaded matrix is written in column blocks; a streamed one scattered row block by row block.
            scatter = source is not None
            blocks = source if scatter else partial(transposed_blocks, tensor)
        else:
            initializer_name, scatter = name, False
            blocks = source if source is not None else partial(row_blocks, tensor)
        graph.initializer.append(data.add(initializer_name, data_type, shape, blocks, reuse=True, transposed_rows=scatter))
    if dropped:
        gone = {id(n) for n in dropped}
        nodes = [n for n in graph.node if id(n) not in gone]
        del graph.node[:]
        graph.node.extend(nodes)
    kept = [v for v in graph.input if v.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)


def _torch_initializers(model: onnx.ModelProto, data: DataFile) -> None:
    """Initializers torch wrote itself (small parameters, folded constants): large ones external."""
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        array = numpy_helper.to_array(tensor)
        if array.nbytes >= INLINE_BYTES:
            external = data.add(tensor.name, tensor.data_type, array.shape, lambda: [array], reuse=False)
            model.graph.initializer[index].CopyFrom(external)


def export_graph(
    module: ExportGraph,
    args,
    onnx_path: Path,
    data_name: str,
    input_names,
    output_names,
    shapes: dict[str, tuple],
    dynamic_axes,
    custom_op: bool = False,
    share: Path | None = None,
    streams: Mapping[str, Blocks] | None = None,
) -> None:
    """Export ``module(*args)`` to ``onnx_path`` with its weights in ``onnx_path.parent / data_name``.

    Also: input/output dims from ``shapes``, hierarchical names for the custom nodes and the
    model-local cross-attention function. ``share``: a graph already written with the same data
    file, whose tensors are reused by name (the data file is appended to, not rewritten).
    ``streams``: for weights of ``module`` (names as in ``module.named_parameters()``) whose
    tensors are shape stubs, a callable giving their row blocks to write instead.
    """
    weights = large_tensors(module)
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=f".{onnx_path.stem}_") as tmp:
        tmp_path = Path(tmp) / onnx_path.name
        _export(module, args, weights, tmp_path, input_names, output_names, dynamic_axes, custom_op)
        model = onnx.load(str(tmp_path))  # graph and small constants only
    set_io_shapes(model, shapes)
    name_cross_attention_nodes(model)
    add_cross_attention_function(model)
    model.producer_name = "slowfast_trt"
    data = DataFile(onnx_path.parent / data_name, share)
    try:
        _torch_initializers(model, data)
        _weights_to_initializers(model, weights, data, streams or {})
    finally:
        data.close()
    onnx.save(model, str(onnx_path))
    onnx.checker.check_model(str(onnx_path))
