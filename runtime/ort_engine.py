"""ONNX Runtime engines with IO binding: tensors are bound by address, never copied through host memory.

Every input is bound at the address of the caller's torch tensor (on CPU, host memory; with
the CUDA provider, device memory), and every output either at the address of a buffer the
caller passes (the KV cache slot ``[P:P+L]`` of each layer, a preallocated logits row) or at
a torch tensor this engine allocates from the shape the inputs determine. A decode step
therefore reads the past K/V where the cache keeps them and writes the new rows straight
into the cache: no copy, no allocation of cache-sized buffers.

On CUDA the session runs on a torch stream of the engine's own, passed to ONNX Runtime as
its ``user_compute_stream`` (torch's default stream has handle 0, which ONNX Runtime reads as
"none"), with ``disable_synchronize_execution_providers``: a call orders that stream after
torch's current one and the current one after it (``wait_stream``, device-side events), so
neither the inputs nor the outputs need a host synchronisation.

bfloat16 graphs are not run here (ONNX Runtime's Python binding has no bfloat16 element
type); use float32/float16 exports, or TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from slowfast_trt.runtime.engine import (
    Engine,
    EngineError,
    TensorInfo,
    check_output_buffer,
    data_pointer,
    dtype_name,
    numpy_dtype,
    resolve_output_shape,
    torch_dtype,
)
from slowfast_trt.runtime.ort_shared_weights import SharedWeights

__all__ = ["OrtEngine", "cuda_provider_available", "ort_providers"]


def cuda_provider_available() -> bool:
    """ONNX Runtime has its CUDA provider and torch can allocate the device buffers it binds."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def ort_providers(device: torch.device, stream: int | None = None) -> list:
    """Providers for ``device``; on CUDA, ``stream`` (a ``cudaStream_t``, not 0) is ONNX Runtime's compute stream."""
    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        if stream:
            options.update(has_user_compute_stream="1", user_compute_stream=str(int(stream)))
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def run_options(device: torch.device):
    """``RunOptions`` of a call: on CUDA no synchronisation at the end of a run (see the module docstring)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if device.type == "cuda":
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    return options


def _infos(args) -> tuple[TensorInfo, ...]:
    out = []
    for arg in args:
        shape = tuple(d if isinstance(d, int) else (str(d) if d is not None else "?") for d in arg.shape)
        out.append(TensorInfo(arg.name, dtype_name(torch_dtype(arg.type)), shape))
    return tuple(out)


class OrtEngine(Engine):
    """One ONNX graph in an ``InferenceSession``, run with IO binding on ``device``.

    ``shared`` (CPU): the external initializers come from a :class:`SharedWeights` mapping
    (``runtime/ort_shared_weights.py``) instead of ONNX Runtime's own file read, with weight
    prepacking off, so sessions over the same data file (``decoder`` and ``decoder_nocross``)
    hold one resident copy between them (7B widths, 2 layers, 4.04 GB of decoder data: RSS
    3.94 GB with both sessions after a decode step of each, against 8.1 GB prepacked and
    ~9.3 GB with each session mapping the file itself). One-row decode steps take the GEMV
    path either way.
    """

    def __init__(self, name: str, path: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                 shared: SharedWeights | None = None):
        import onnxruntime as ort

        self.name = name
        self.device = torch.device(device)
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{name}: engine file {path} not found")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the custom-domain function inlining is expected
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._shared = shared  # its values back the session's initializers: kept as long as the session
        if shared is not None:
            options.add_session_config_entry("session.disable_prepacking", "1")
            try:
                shared.add_to(options, path)
            except (OSError, ValueError) as exc:
                raise EngineError(f"{name}: cannot map the weights of {path} ({exc})") from None
        # CUDA: a stream of our own, so that ONNX Runtime's work is ordered with torch's by events.
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        stream = self._stream.cuda_stream if self._stream is not None else None
        try:
            self._session = ort.InferenceSession(str(path), options, providers=ort_providers(self.device, stream))
        except Exception as exc:  # ONNX Runtime raises its own exception types for bad files
            raise EngineError(f"{name}: ONNX Runtime cannot load {path} ({type(exc).__name__}: {exc})") from None
        self._inputs = _infos(self._session.get_inputs())
        self._outputs = _infos(self._session.get_outputs())
        for info in self._inputs + self._outputs:
            if torch_dtype(info.dtype) == torch.bfloat16:
                raise EngineError(f"{name}: {info.name} is bfloat16, which ONNX Runtime's IO binding cannot bind; "
                                  "export with --precision fp16 or fp32, or use TensorRT")
        self._binding = self._session.io_binding()
        self._run_options = run_options(self.device)
        self._device_type = "cuda" if self.device.type == "cuda" else "cpu"
        self._device_id = self.device.index or 0

    def _bind(self, kind: str, name: str, tensor: torch.Tensor) -> None:
        if tensor.device != self.device and not (tensor.device.type == self.device.type == "cpu"):
            raise EngineError(f"{self.name}: {name} is on {tensor.device}, the engine runs on {self.device}")
        bind = self._binding.bind_input if kind == "input" else self._binding.bind_output
        bind(name, self._device_type, self._device_id, numpy_dtype(tensor.dtype), tuple(tensor.shape), data_pointer(tensor))

    def run(self, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None):
        outputs = dict(outputs or {})
        unknown = sorted(set(outputs) - set(self.output_names))
        if unknown:
            raise EngineError(f"{self.name}: unknown output buffers {', '.join(unknown)}")
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for info in self._inputs:
            if info.name not in feeds:
                raise EngineError(f"{self.name}: missing input {info.name}")
            self._bind("input", info.name, feeds[info.name])
        result = {}
        for info in self._outputs:
            shape = resolve_output_shape(self.name, info, self._inputs, feeds)
            buffer = outputs.get(info.name)
            if shape is None:
                raise EngineError(f"{self.name}: cannot tell the shape of output {info.name} {info.shape} from the inputs")
            if buffer is None:
                buffer = torch.empty(shape, dtype=torch_dtype(info.dtype), device=self.device)
            else:
                check_output_buffer(self.name, info.name, buffer, shape, torch_dtype(info.dtype))
            self._bind("output", info.name, buffer)
            result[info.name] = buffer
        current = torch.cuda.current_stream(self.device) if self._stream is not None else None
        if current is not None:
            self._stream.wait_stream(current)  # inputs written on torch's stream are ready for ONNX Runtime
        try:
            self._session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:
            raise EngineError(f"{self.name}: ONNX Runtime failed ({type(exc).__name__}: {exc})") from None
        if current is not None:
            current.wait_stream(self._stream)  # readers on torch's stream see the outputs
        return result

    def close(self) -> None:
        self._binding = None
        self._session = None
        self._shared = None


# Graphs whose weights live in one data file (decoder_nocross's initializers point into
# decoder.onnx.data): on CPU their sessions share one mapping of it (see OrtEngine).
SHARED_WEIGHT_GROUPS = (("decoder", "decoder_nocross"),)


def load_ort_engines(directory: Path, files: Mapping[str, str], device: torch.device, threads: int | None,
                     names: Sequence[str]) -> dict[str, OrtEngine]:
    """Open the ``names`` subgraphs listed in ``files`` (subgraph -> relative ONNX path).

    On CPU the graphs of a ``SHARED_WEIGHT_GROUPS`` group get one :class:`SharedWeights`, so
    ``decoder`` and ``decoder_nocross`` hold one copy of the decoder weights between them."""
    shared: dict[str, SharedWeights] = {}
    if torch.device(device).type == "cpu":
        for group in SHARED_WEIGHT_GROUPS:
            weights = SharedWeights()
            shared.update((name, weights) for name in group)
    engines = {}
    for name in names:
        if name not in files:
            raise EngineError(f"{directory}: the manifest lists no {name} graph")
        engines[name] = OrtEngine(name, directory / files[name], device, threads, shared=shared.get(name))
    return engines
