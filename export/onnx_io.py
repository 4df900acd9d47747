"""Writing exported graphs: TorchScript export, node names, one external-data file per graph.

Memory: ``torch.onnx.export`` would serialise every weight into the proto (several full
copies at once: the C++ proto, its serialised bytes, constant-folded transposes of every
Linear weight). Here every tensor of ``INLINE_BYTES`` or more enters the trace as an extra
graph input instead, so torch's proto holds only the graph and small constants; afterwards
each such input becomes an initializer whose bytes are streamed from the module's own tensor
to the data file, one tensor at a time. A weight only read through ``Transpose(perm=[1, 0])``
(Linear on 3-D input) is written transposed and the Transpose dropped, as constant folding
would have done.

``decoder_nocross.onnx`` shares ``decoder.onnx.data``: initializers with the same name, dtype
and shape point at the regions already written. Anything that rewrites such a proto must keep
its external-data references (``onnx.load(..., load_external_data=False)``, then ``onnx.save``).
"""

from __future__ import annotations

import tempfile
import warnings
from itertools import chain
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import external_data_helper, helper, numpy_helper
from torch import nn

from .cross_attention import op_schema
from .custom_op import custom_opsets, register_onnx_symbolic
from .onnx_function import FUNCTION_OPSET, add_cross_attention_function

OPSET = FUNCTION_OPSET  # 17: LayerNormalization is native; TensorRT 10 parses up to 20
INLINE_BYTES = 1024  # smaller tensors stay in the proto (norm biases of tiny models, constants)
_ALIGN = 4096  # large tensors start on a page boundary (mmap-friendly)


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
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript);
            # trace warnings about Python-side shape logic are expected for the static branches.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(args) + tuple(weights.values()),
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
    """Appends tensors to one external-data file; ``regions`` maps names already in it."""

    def __init__(self, path: Path, share: Path | None):
        self.path, self.regions = path, {}
        if share is None:
            path.unlink(missing_ok=True)
        else:
            for tensor in onnx.load(str(share), load_external_data=False).graph.initializer:
                if external_data_helper.uses_external_data(tensor):
                    info = external_data_helper.ExternalDataInfo(tensor)
                    self.regions[tensor.name] = (tensor.data_type, tuple(tensor.dims), info.offset, info.length)
        self.handle = open(path, "ab")

    def add(self, name: str, array: np.ndarray, reuse: bool) -> onnx.TensorProto:
        data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        region = self.regions.get(name) if reuse else None
        if region is None or region[:2] != (data_type, array.shape):
            offset = self.handle.tell()
            self.handle.write(b"\0" * (-offset % _ALIGN))
            offset += -offset % _ALIGN
            self.handle.write(memoryview(np.ascontiguousarray(array)).cast("B"))
            region = (data_type, array.shape, offset, array.nbytes)
            self.regions[name] = region
        return _external(name, data_type, array.shape, self.path.name, region[2], region[3])


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)


def _weights_to_initializers(model: onnx.ModelProto, weights: dict[str, torch.Tensor], data: DataFile) -> None:
    """Turn the weight graph inputs into external initializers (Transpose-only weights pre-transposed)."""
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
        value = tensor.detach()
        transposed = value.dim() == 2 and all(n.op_type == "Transpose" and _perm(n) == [1, 0] for n in users)
        if transposed:
            value, initializer_name = value.t(), f"{name}.T"
            for node in users:
                dropped.append(node)
                for user in consumers.get(node.output[0], []):
                    user.input[:] = [initializer_name if i == node.output[0] else i for i in user.input]
        else:
            initializer_name = name
        array = value.to("cpu").contiguous().numpy()
        graph.initializer.append(data.add(initializer_name, array, reuse=True))
        del array, value
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
            model.graph.initializer[index].CopyFrom(data.add(tensor.name, array, reuse=False))


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
) -> None:
    """Export ``module(*args)`` to ``onnx_path`` with its weights in ``onnx_path.parent / data_name``.

    Also: input/output dims from ``shapes``, hierarchical names for the custom nodes and the
    model-local cross-attention function. ``share``: a graph already written with the same data
    file, whose tensors are reused by name (the data file is appended to, not rewritten).
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
        _weights_to_initializers(model, weights, data)
    finally:
        data.handle.close()
    onnx.save(model, str(onnx_path))
    onnx.checker.check_model(str(onnx_path))
