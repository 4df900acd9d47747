"""Slow-token cross-attention kernels for PyTorch tensors, and the pure-PyTorch reference.

The CUDA launcher lives in ``plugins/slowFastCrossAttn`` and is compiled into the extension module
``slowfast_trt._kernels`` (the same static kernel library the TensorRT plugin links). This module:

* imports the extension lazily (``is_available()``, a clear error when it was not built),
* wraps it for torch tensors (:func:`cross_attention`): shape/dtype/device checks with ``ValueError``,
  output and workspace allocation, launch on the current torch stream,
* reports what the build produced (:func:`build_info`, :func:`plugin_library_path`).

Layouts (contract): query ``[rows, H, D]``; slow_key/slow_value ``[B, Hkv, Ns, D]``; slow_lengths ``[B]``
int32; row_offsets ``[B + 1]`` int32 (rows of sequence b are ``row_offsets[b]:row_offsets[b + 1]``);
residual ``[rows, H * D]`` and gate ``[rows, 1]`` (fused gate); output ``[rows, H * D]``.
Query head ``h`` reads kv head ``h // (H // Hkv)``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "build_info",
    "cross_attention",
    "is_available",
    "plugin_library_path",
]

SUPPORTED_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
SUPPORTED_HEAD_DIMS = (64, 128)  # compiled into the kernels; tests check it against the extension
_ALIGNMENT = 16  # bytes; the kernels use 16-byte vector loads
_BUILD_INFO_NAME = "_build_info.json"


def _package_dirs() -> list[Path]:
    """Directories that make up the installed package (editable installs merge source and build trees)."""
    package = sys.modules["slowfast_trt"]  # always imported before any of its modules
    return [Path(p) for p in getattr(package, "__path__", [])]


def _find_package_file(relative: str) -> Path | None:
    for directory in _package_dirs():
        candidate = directory / relative
        if candidate.is_file():
            return candidate
    try:
        from importlib.resources import files

        candidate = files("slowfast_trt").joinpath(relative)
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, TypeError, ValueError, NotImplementedError):
        pass
    try:
        spec = importlib.util.find_spec("slowfast_trt._kernels")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / relative
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def build_info() -> dict[str, Any]:
    """What the CMake build produced, from the generated ``slowfast_trt/_build_info.json``.

    Keys: ``kernels`` (built, cuda_architectures, cuda_compiler_version, reason), ``module`` (built,
    reason), ``plugin`` (built, library, tensorrt_version, reason), ``schema`` (op_name, op_version,
    plugin_version, plugin_namespace). Returns ``{"found": False, ...}`` when the package was not
    installed through the build backend (e.g. imported straight from a source checkout).
    """
    path = _find_package_file(_BUILD_INFO_NAME)
    if path is None:
        return {"found": False, "reason": "slowfast_trt/_build_info.json not found: install with `pip install -e .`"}
    info = json.loads(path.read_text())
    info["found"] = True
    return info


def _not_built_reason() -> str:
    info = build_info()
    if not info.get("found"):
        return info["reason"]
    for part in ("module", "kernels"):
        reason = info.get(part, {}).get("reason")
        if reason:
            return reason
    return "unknown reason (see the CMake output of `pip install -v -e .`)"


@functools.lru_cache(maxsize=1)
def _module() -> ModuleType:
    try:
        return importlib.import_module("slowfast_trt._kernels")
    except ImportError as exc:
        raise RuntimeError(
            "slowfast_trt._kernels is not available: "
            f"{_not_built_reason()}. Rebuild with a CUDA compiler on PATH: `pip install -v -e .` "
            f"(import error: {exc})"
        ) from exc


def is_available() -> bool:
    """True when the compiled extension imports (it does not need a GPU to import)."""
    try:
        _module()
    except RuntimeError:
        return False
    return True


def plugin_library_path() -> Path | None:
    """Path of ``libslowfast_trt_plugin.so`` for ``trt.get_plugin_registry().load_library``, if built."""
    info = build_info()
    if not info.get("plugin", {}).get("built"):
        return None
    return _find_package_file(info["plugin"]["library"])


def _check_tensor(name: str, t: torch.Tensor, dims: int, dtype: torch.dtype | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dims, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")


def _check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")


def _check_inputs(query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate, num_heads, num_kv_heads):
    """Validates the contract; returns (rows, batch, head_dim, slow_tokens, dtype name)."""
    _check_tensor("query", query, 3)
    if query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"query dtype must be float32, float16 or bfloat16, got {query.dtype}")
    rows, heads, head_dim = query.shape
    if heads != num_heads:
        raise ValueError(f"query.shape[1] ({heads}) must equal num_heads ({num_heads})")
    if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim (query.shape[2]) must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    _check_tensor("slow_key", slow_key, 4, query.dtype)
    _check_tensor("slow_value", slow_value, 4, query.dtype)
    batch, _, slow_tokens, _ = slow_key.shape
    _check_shape("slow_key", slow_key, (batch, num_kv_heads, slow_tokens, head_dim))
    _check_shape("slow_value", slow_value, tuple(slow_key.shape))
    _check_tensor("slow_lengths", slow_lengths, 1, torch.int32)
    _check_shape("slow_lengths", slow_lengths, (batch,))
    _check_tensor("row_offsets", row_offsets, 1, torch.int32)
    _check_shape("row_offsets", row_offsets, (batch + 1,))
    if (residual is None) != (gate is None):
        raise ValueError("residual and gate must be given together (fused gate) or not at all")
    if residual is not None:
        _check_tensor("residual", residual, 2, query.dtype)
        _check_shape("residual", residual, (rows, num_heads * head_dim))
        _check_tensor("gate", gate, 2, query.dtype)
        _check_shape("gate", gate, (rows, 1))
    return rows, batch, head_dim, slow_tokens, SUPPORTED_DTYPES[query.dtype]


def _check_device(tensors: dict[str, torch.Tensor | None]) -> torch.device:
    device = tensors["query"].device
    if device.type != "cuda":
        raise ValueError(f"query must be a CUDA tensor, got device {device}")
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} like query")
        if name not in ("slow_lengths", "row_offsets", "gate") and t.data_ptr() % _ALIGNMENT:
            raise ValueError(f"{name} must start on a {_ALIGNMENT}-byte boundary (use .clone() of a sliced view)")
    return device


@functools.lru_cache(maxsize=None)
def _device_properties(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, props.major * 10 + props.minor


def launch_stream(stream, device: torch.device) -> "torch.cuda.Stream":
    """The torch stream object for ``stream``: None = the current stream of ``device``, a
    ``torch.cuda.Stream``, or a raw ``cudaStream_t`` (the current or default stream when it is
    theirs, else wrapped as an ``ExternalStream``)."""
    if stream is None:
        return torch.cuda.current_stream(device)
    if isinstance(stream, torch.cuda.Stream):
        return stream
    handle = int(stream)
    for known in (torch.cuda.current_stream(device), torch.cuda.default_stream(device)):
        if known.cuda_stream == handle:
            return known
    return torch.cuda.ExternalStream(handle, device=device)


def cross_attention(
    query: torch.Tensor,
    slow_key: torch.Tensor,
    slow_value: torch.Tensor,
    slow_lengths: torch.Tensor,
    row_offsets: torch.Tensor,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    *,
    num_heads: int,
    num_kv_heads: int,
    scale: float,
    out: torch.Tensor | None = None,
    stream: torch.cuda.Stream | int | None = None,
    backend: str = "auto",
    num_splits: int = 0,
) -> torch.Tensor:
    """Slow-token cross-attention with the compiled CUDA kernels (the TensorRT plugin's code).

    Returns ``out`` (allocated when None) of shape ``[rows, num_heads * head_dim]``: the attention context,
    or ``residual + gate * context`` when residual and gate are given. ``stream``: None = the current
    torch stream of the query's device, or a ``torch.cuda.Stream``, or a raw ``cudaStream_t`` int (0 = the
    legacy default stream). The call behaves like a torch op run under ``torch.cuda.stream(stream)``:
    ``out`` and the workspace are allocated on that stream (the caching allocator only orders a reused
    block after its earlier users on the stream it was allocated for), the inputs must be ready on it
    (``stream.wait_stream(producer)``), and a returned ``out`` used on another stream needs
    ``wait_stream`` and ``out.record_stream`` there. ``backend``: "auto" (tensor cores for float16/bfloat16), "simt" or "mma".
    ``num_splits``: 0 = automatic split of the slow tokens, > 0 forces a count (tests, tuning).
    Raises ValueError for contract violations, RuntimeError when the extension is missing or CUDA fails.
    """
    rows, batch, head_dim, slow_tokens, dtype_name = _check_inputs(
        query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate, num_heads, num_kv_heads
    )
    if out is not None:
        _check_tensor("out", out, 2, query.dtype)
        _check_shape("out", out, (rows, num_heads * head_dim))
    device = _check_device(
        {"query": query, "slow_key": slow_key, "slow_value": slow_value, "slow_lengths": slow_lengths,
         "row_offsets": row_offsets, "residual": residual, "gate": gate, "out": out}
    )
    mod = _module()
    num_sms, sm_version = _device_properties(device.index if device.index is not None else torch.cuda.current_device())
    plan = mod.plan(dtype_name, rows, batch, num_heads, num_kv_heads, head_dim, slow_tokens, num_sms,
                    backend, num_splits)
    with torch.cuda.device(device):
        target = launch_stream(stream, device)
        # Everything the launch writes is allocated for the stream it runs on (see the docstring).
        with torch.cuda.stream(target):
            if out is None:
                out = torch.empty(rows, num_heads * head_dim, dtype=query.dtype, device=device)
            workspace = torch.empty(max(plan["workspace_bytes"], 1), dtype=torch.uint8, device=device)
            mod.launch(
                dtype_name, rows, batch, num_heads, num_kv_heads, head_dim, slow_tokens, float(scale),
                query.data_ptr(), slow_key.data_ptr(), slow_value.data_ptr(), slow_lengths.data_ptr(),
                row_offsets.data_ptr(), residual.data_ptr() if residual is not None else 0,
                gate.data_ptr() if gate is not None else 0, out.data_ptr(), workspace.data_ptr(),
                plan["workspace_bytes"], target.cuda_stream, num_sms, sm_version, backend, num_splits,
            )
    return out
