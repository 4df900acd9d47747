"""TensorRT engines: thin glue over ``tensorrt`` (imported lazily, with a clear error when absent).

Tensors are torch CUDA tensors bound by address (``set_tensor_address``); outputs go into
caller buffers (KV cache slots, the logits row) or into tensors allocated from the shapes
TensorRT infers; ``execute_async_v3`` runs on torch's current stream. Everything that is not
a TensorRT call (dtype names, shape checks, dummy addresses for empty tensors) is the plain,
tested code of :mod:`slowfast_trt.runtime.engine`.

Decoder engines have a prefill profile (0) and a decode profile (1): :func:`with_decode_context`
puts a second context of the same engine on profile 1. Profile 1 has static shapes (one row
over the whole preallocated cache, ``past_length`` masking the rows not yet written), so the
runtime captures a decode step, ``execute_async_v3`` plus the copy of the new K/V row into the
cache, in a CUDA graph once per video and replays it (:mod:`.decode_graph`), each graph on a
context of its own (:meth:`TrtEngine.for_capture`). Calls with the
past as the cache's valid prefix (prefill, ``decode_steps="dynamic"``) run on profile 0.
Capture needs nothing TensorRT-specific beyond what :meth:`TrtEngine.run` does: shapes and
addresses set before ``execute_async_v3`` on torch's current stream (the capture stream),
and one eager run first (TensorRT finishes its per-shape setup in the first enqueue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from slowfast_trt.trt_import import import_tensorrt as _import_tensorrt
from slowfast_trt.runtime.engine import (
    DECODE_PROFILE,
    Engine,
    EngineError,
    ProfileRouter,
    TensorInfo,
    check_output_buffer,
    check_profile,
    data_pointer,
    dtype_name,
    torch_dtype,
)

__all__ = ["TrtEngine", "check_engine_folder", "import_tensorrt", "tensorrt_available", "with_decode_context"]


def import_tensorrt():
    """``import tensorrt``, or an ``EngineError`` saying what to do instead."""
    return _import_tensorrt("install TensorRT, or load the export folder with backend='onnxruntime'", EngineError)


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except EngineError:
        return False
    return torch.cuda.is_available()


def load_plugin_library(trt) -> None:
    """Register the slow-token cross-attention plugin with TensorRT, once per process (the
    one loader, shared with the engine build: :mod:`slowfast_trt.ops.cross_attention.plugin`)."""
    from slowfast_trt.ops.cross_attention.plugin import load_plugin_library as load

    load(trt, EngineError)


class TrtEngine(Engine):
    """One serialized TensorRT engine and an execution context on optimisation ``profile``."""

    def __init__(self, name: str, path: str | Path, device: torch.device | str = "cuda", profile: int = 0):
        trt = import_tensorrt()
        self.name = name
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise EngineError(f"{name}: TensorRT engines run on a CUDA device, got {self.device}")
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{name}: engine file {path} not found")
        load_plugin_library(trt)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineError(f"{name}: TensorRT cannot deserialize {path} (built by another TensorRT version or GPU?)")
        self.profile = check_profile(name, profile, self.num_profiles)
        self._context = self._create_context(self.profile)
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            dtype = dtype_name(torch_dtype(str(self._engine.get_tensor_dtype(tensor))))
            shape = tuple(int(d) if int(d) >= 0 else f"dim{k}" for k, d in enumerate(self._engine.get_tensor_shape(tensor)))
            is_input = self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(TensorInfo(tensor, dtype, shape))
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)

    @property
    def num_profiles(self) -> int:
        return int(self._engine.num_optimization_profiles)

    def _create_context(self, profile: int):
        """A context on ``profile``. Profile 0 allocates activation memory for the largest
        profile (TensorRT's default); any other allocates for its own shapes only
        (``ON_PROFILE_CHANGE``), so a one-row decode context costs little next to the prefill one."""
        trt = self._trt
        with torch.cuda.device(self.device):
            if profile == 0:
                context = self._engine.create_execution_context()
            else:
                context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE)
            if context is None:
                raise EngineError(f"{self.name}: TensorRT could not create an execution context (out of device memory?)")
            if profile != 0:
                stream = torch.cuda.current_stream(self.device)
                if not context.set_optimization_profile_async(profile, stream.cuda_stream):
                    raise EngineError(f"{self.name}: TensorRT refused optimisation profile {profile}")
                stream.synchronize()
        return context

    def context_on(self, profile: int) -> "TrtEngine":
        """This engine (weights shared, not deserialized again) with a second context on ``profile``."""
        check_profile(self.name, profile, self.num_profiles)
        other = object.__new__(TrtEngine)
        other.__dict__.update(self.__dict__)
        other.profile, other._context = profile, self._create_context(profile)
        return other

    def for_capture(self) -> "TrtEngine":
        """A second context on this profile for one CUDA graph: a graph replays the context's
        activation memory and per-shape state as captured, so no other call may change them."""
        return self.context_on(self.profile)

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


def with_decode_context(engine: TrtEngine, max_seq_len: int) -> Engine:
    """A decoder engine with two profiles as a :class:`ProfileRouter`: static decode steps
    (one row over the whole ``max_seq_len``-row cache) on a second context on the decode
    profile, everything else on profile 0; else ``engine``."""
    if engine.num_profiles <= DECODE_PROFILE:
        return engine
    return ProfileRouter((engine, engine.context_on(DECODE_PROFILE)), full_cache=max_seq_len)


def check_engine_folder(path: str | Path, device: torch.device) -> dict:
    """``engines.json`` of ``path`` checked against this TensorRT and this GPU, before any
    engine is deserialized (:func:`slowfast_trt.export.trt_plan.check_engine_folder`)."""
    from slowfast_trt.export.trt_plan import check_engine_folder as check

    trt = import_tensorrt()
    return check(path, trt.__version__, torch.cuda.get_device_capability(device))
