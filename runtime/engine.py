"""The one small interface every backend implements, and the plain helpers they share.

An :class:`Engine` runs one exported subgraph (``vision``, ``pooler``, ``slow_kv``,
``decoder``, ...) with named inputs and outputs::

    outputs = engine.run({"inputs_embeds": x, ...}, outputs={"logits": logits_buffer, ...})

Tensors cross the interface as ``torch.Tensor`` on the engine's device: torch is a
dependency anyway, and its tensors hand raw device pointers to ONNX Runtime's IO binding
and to TensorRT without a copy. ``outputs`` may name caller-owned destination buffers (a
slot of the KV cache, a preallocated logits row): the engine writes there and returns
them; outputs not named are allocated by the engine. Work is queued on the engine's
stream; :meth:`Engine.synchronize` waits for it (timings call it).

Everything here is plain Python shared by the torch, ONNX Runtime and TensorRT engines so
that it is tested without a GPU: the dtype tables, and the checks that feeds and output
buffers match the engine's tensor descriptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from slowfast_trt import dtypes

__all__ = [
    "Engine",
    "EngineError",
    "ProfileRouter",
    "TensorInfo",
    "check_profile",
    "check_feeds",
    "check_output_buffer",
    "data_pointer",
    "dtype_name",
    "numpy_dtype",
    "profile_for_step",
    "resolve_output_shape",
    "torch_dtype",
]

_EMPTY: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


class EngineError(ValueError):
    """An engine file, its inputs or its outputs are not what the runtime expects."""


def torch_dtype(name: str | torch.dtype | np.dtype) -> torch.dtype:
    """:func:`slowfast_trt.dtypes.torch_dtype`, failing with an :class:`EngineError`."""
    try:
        return dtypes.torch_dtype(name)
    except ValueError as exc:
        raise EngineError(str(exc)) from None


def numpy_dtype(dtype: str | torch.dtype) -> np.dtype:
    """:func:`slowfast_trt.dtypes.numpy_dtype`, failing with an :class:`EngineError`."""
    try:
        return dtypes.numpy_dtype(dtype)
    except ValueError as exc:
        raise EngineError(str(exc)) from None


def dtype_name(dtype: torch.dtype) -> str:
    """:func:`slowfast_trt.dtypes.dtype_name`, failing with an :class:`EngineError`."""
    try:
        return dtypes.dtype_name(dtype)
    except ValueError as exc:
        raise EngineError(str(exc)) from None


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output: dtype name and shape, with ``str`` for symbolic dimensions."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def matches(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(not isinstance(want, int) or want < 0 or want == got for want, got in zip(self.shape, shape))


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_feeds(engine: str, inputs: Sequence[TensorInfo], feeds: Mapping[str, torch.Tensor]) -> None:
    """Every input present, none unknown, dtypes and fixed dimensions as described."""
    names = {info.name for info in inputs}
    missing = [info.name for info in inputs if info.name not in feeds]
    unknown = sorted(set(feeds) - names)
    if missing or unknown:
        raise EngineError(
            f"{engine}: feeds do not match the engine's inputs"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    for info in inputs:
        tensor = feeds[info.name]
        if tensor.dtype != torch_dtype(info.dtype):
            raise EngineError(f"{engine}: input {info.name} has dtype {dtype_name(tensor.dtype)}, expected {info.dtype}")
        if not info.matches(tensor.shape):
            raise EngineError(f"{engine}: input {info.name} has shape {_fmt(tensor.shape)}, expected {_fmt(info.shape)}")


def check_output_buffer(engine: str, name: str, buffer: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> None:
    """A caller-owned output buffer must have exactly the output's shape and dtype and be dense."""
    if tuple(buffer.shape) != tuple(shape) or buffer.dtype != dtype:
        raise EngineError(
            f"{engine}: output buffer {name} is {_fmt(buffer.shape)} {dtype_name(buffer.dtype)}, "
            f"the engine produces {_fmt(shape)} {dtype_name(dtype)}"
        )
    if not buffer.is_contiguous():
        raise EngineError(f"{engine}: output buffer {name} must be contiguous")


def resolve_output_shape(engine: str, output: TensorInfo, inputs: Sequence[TensorInfo],
                         feeds: Mapping[str, torch.Tensor]) -> tuple[int, ...] | None:
    """Concrete shape of an output whose symbolic dimensions all appear in some input's shape.

    The exporter names dynamic dimensions consistently (``seq``, ``past``, ``frames``,
    ``slow_tokens``), so e.g. ``new_key_0`` (1, "seq", 2, 16) takes ``seq`` from
    ``inputs_embeds``. Returns None when a dimension is not determined by the inputs.
    """
    sizes: dict[str, int] = {}
    for info in inputs:
        tensor = feeds[info.name]
        for dim, size in zip(info.shape, tensor.shape):
            if isinstance(dim, str):
                if sizes.setdefault(dim, int(size)) != int(size):
                    raise EngineError(
                        f"{engine}: dimension {dim!r} is {sizes[dim]} in one input and {int(size)} in {info.name}"
                    )
    shape = []
    for dim in output.shape:
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in sizes:
            shape.append(sizes[dim])
        else:
            return None
    return tuple(shape)


def data_pointer(tensor: torch.Tensor) -> int:
    """Device address of a dense tensor; an empty tensor gets a valid dummy address.

    Engines need a non-null address even for zero-size tensors (``cross_rows`` when no row
    attends, ``past_*`` at position 0), and an empty torch tensor may have address 0.
    """
    if not tensor.is_contiguous():
        raise EngineError(f"tensor of shape {_fmt(tensor.shape)} must be contiguous to be bound by pointer")
    if tensor.numel() == 0 or tensor.data_ptr() == 0:
        key = (tensor.dtype, tensor.device)
        if key not in _EMPTY:
            _EMPTY[key] = torch.zeros(16, dtype=tensor.dtype, device=tensor.device)
        return _EMPTY[key].data_ptr()
    return tensor.data_ptr()


class Engine(ABC):
    """One subgraph with named inputs and outputs, run on one device stream."""

    name: str
    device: torch.device
    _inputs: tuple[TensorInfo, ...]  # set by each implementation from its graph or engine
    _outputs: tuple[TensorInfo, ...]

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        """Input descriptions, in the graph's order."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        """Output descriptions, in the graph's order."""
        return self._outputs

    @abstractmethod
    def run(
        self, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Run once; write outputs into the given buffers, allocate the others; return all outputs."""

    def synchronize(self) -> None:
        """Wait for the work queued by :meth:`run` (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        """Release the engine's resources; the default has none to release."""

    def for_capture(self) -> "Engine":
        """An engine for one CUDA graph: its execution state (TensorRT context, activation
        memory, per-shape setup) is used by no other caller, since a graph replays the state
        as captured. Stateless engines return themselves; the caller closes what it got when
        it is not ``self``."""
        return self

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.outputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device})"


# -- optimisation profiles --------------------------------------------------------------------

PREFILL_PROFILE, DECODE_PROFILE = 0, 1  # the decoder engines' profiles (export.trt_plan.decoder_profiles)


def check_profile(engine: str, profile: int, num_profiles: int) -> int:
    """``profile`` if it is an index into the engine's ``num_profiles`` profiles, else an ``EngineError``."""
    if isinstance(profile, bool) or not isinstance(profile, int) or not 0 <= profile < num_profiles:
        raise EngineError(f"{engine}: profile must be an integer in [0, {num_profiles - 1}], got {profile!r}")
    return profile


def profile_for_step(num_profiles: int, rows: int, past: int, full_cache: int) -> int:
    """Which decoder profile runs a call of ``rows`` new rows over ``past`` cached rows.

    The decode profile (static shapes: one row over the whole ``full_cache``-row cache, what a
    CUDA graph replays) when the engine has it and the call is such a step; everything else
    profile 0 (prefill, which covers every shape with the past as the cache's valid prefix).
    """
    static_step = rows == 1 and past == full_cache
    return DECODE_PROFILE if num_profiles > DECODE_PROFILE and static_step else PREFILL_PROFILE


class ProfileRouter(Engine):
    """One engine seen through one execution context per optimisation profile.

    ``contexts[p]`` runs profile ``p`` (all share the engine's weights); each call goes to
    the profile :func:`profile_for_step` picks from the rows of ``inputs_embeds`` (dim 1) and
    the past rows of ``past_key_0`` (dim 1) against ``full_cache`` (the KV cache length, the
    decode profile's fixed past). The contexts run one at a time on the same stream.
    """

    def __init__(self, contexts: Sequence[Engine], full_cache: int):
        if not contexts:
            raise EngineError("ProfileRouter needs at least one context")
        for name in ("inputs_embeds", "past_key_0"):
            if name not in contexts[0].input_names:
                raise EngineError(f"{contexts[0].name}: no input {name} to choose a profile by")
        self.contexts = tuple(contexts)
        self.name, self.device = contexts[0].name, contexts[0].device
        self.full_cache = full_cache

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self.contexts[0].inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self.contexts[0].outputs

    def pick(self, feeds: Mapping[str, torch.Tensor]) -> Engine:
        """The context that runs ``feeds``."""
        rows, past = (feeds.get(name) for name in ("inputs_embeds", "past_key_0"))
        if rows is None or past is None:
            raise EngineError(f"{self.name}: missing input {'inputs_embeds' if rows is None else 'past_key_0'}")
        profile = profile_for_step(len(self.contexts), int(rows.shape[1]), int(past.shape[1]), self.full_cache)
        return self.contexts[profile]

    def run(self, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None):
        return self.pick(feeds).run(feeds, outputs)

    def synchronize(self) -> None:
        self.contexts[0].synchronize()

    def for_capture(self) -> Engine:
        """A dedicated engine for the calls captured in graphs: static decode steps."""
        return self.contexts[profile_for_step(len(self.contexts), 1, self.full_cache, self.full_cache)].for_capture()

    def close(self) -> None:
        for context in reversed(self.contexts):  # the profile contexts before the engine's owner
            context.close()
