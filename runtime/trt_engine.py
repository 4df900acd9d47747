"""TensorRT engines: thin glue over ``tensorrt`` (imported lazily, with a clear error when absent).

Tensors are torch CUDA tensors bound by address (``set_tensor_address``); outputs go into
caller buffers (KV cache slots, the logits row) or into tensors allocated from the shapes
TensorRT infers; ``execute_async_v3`` runs on torch's current stream. Everything that is not
a TensorRT call (dtype names, shape checks, dummy addresses for empty tensors) is the plain,
tested code of :mod:`slowfast_trt.runtime.engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .engine import Engine, EngineError, TensorInfo, check_output_buffer, data_pointer, dtype_name, torch_dtype

__all__ = ["TrtEngine", "import_tensorrt", "tensorrt_available"]

_PLUGIN_LOADED: set[str] = set()


def import_tensorrt():
    """``import tensorrt``, or an ``EngineError`` saying what to do instead."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        raise EngineError(
            f"TensorRT is not available (import tensorrt failed: {type(exc).__name__}: {exc}); "
            "install TensorRT, or load the export folder with backend='onnxruntime'"
        ) from None
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except EngineError:
        return False
    return torch.cuda.is_available()


def load_plugin_library(trt) -> None:
    """Register the slow-token cross-attention plugin with TensorRT, once per process."""
    from ..kernels import plugin_library_path

    path = plugin_library_path()
    if path is None:
        raise EngineError("the slowfast_trt TensorRT plugin library was not built; reinstall with CUDA and TensorRT present")
    if str(path) not in _PLUGIN_LOADED:
        trt.get_plugin_registry().load_library(str(path))
        _PLUGIN_LOADED.add(str(path))


class TrtEngine(Engine):
    """One serialized TensorRT engine and its execution context on a CUDA device."""

    def __init__(self, name: str, path: str | Path, device: torch.device | str = "cuda"):
        trt = import_tensorrt()
        self.name = name
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise EngineError(f"{name}: TensorRT engines run on a CUDA device, got {self.device}")
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{name}: engine file {path} not found")
        load_plugin_library(trt)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise EngineError(f"{name}: TensorRT cannot deserialize {path} (built by another TensorRT version or GPU?)")
            self._context = self._engine.create_execution_context()
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            dtype = dtype_name(torch_dtype(str(self._engine.get_tensor_dtype(tensor))))
            shape = tuple(int(d) if int(d) >= 0 else f"dim{k}" for k, d in enumerate(self._engine.get_tensor_shape(tensor)))
            is_input = self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(TensorInfo(tensor, dtype, shape))
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None):
        context, outputs = self._context, dict(outputs or {})
        for info in self._inputs:
            tensor = feeds.get(info.name)
            if tensor is None:
                raise EngineError(f"{self.name}: missing input {info.name}")
            if tensor.device != self.device:
                raise EngineError(f"{self.name}: {info.name} is on {tensor.device}, the engine runs on {self.device}")
            if not context.set_input_shape(info.name, tuple(tensor.shape)):
                raise EngineError(f"{self.name}: input {info.name} shape {tuple(tensor.shape)} is outside the engine's profile")
            context.set_tensor_address(info.name, data_pointer(tensor))
        result = {}
        for info in self._outputs:
            shape = tuple(context.get_tensor_shape(info.name))
            buffer = outputs.get(info.name)
            if buffer is None:
                buffer = torch.empty(shape, dtype=torch_dtype(info.dtype), device=self.device)
            else:
                check_output_buffer(self.name, info.name, buffer, shape, torch_dtype(info.dtype))
            context.set_tensor_address(info.name, data_pointer(buffer))
            result[info.name] = buffer
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError(f"{self.name}: TensorRT execution failed")
        return result

    def close(self) -> None:
        self._context = self._engine = self._runtime = None
