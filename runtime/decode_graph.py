"""Decode steps with static shapes and addresses, replayed from a CUDA graph where possible.

Why: a 7B decode step is hundreds of kernels of a few microseconds each; on a Jetson the CPU
time to launch them (TensorRT's ``execute_async_v3``, torch's dispatcher) is a visible share
of the step. A CUDA graph launches them all with one call. A graph replays fixed shapes and
fixed addresses, so a step is expressed over buffers that never move:

* ``past_key_i``/``past_value_i``: the KV cache buffers themselves, all ``max_len`` rows; the
  decoder's ``past_length`` input masks the rows not yet written (``models.qwen2.layers``);
* ``inputs_embeds``: the runner's embedding buffer, refilled before each step;
  ``position_ids`` and ``past_length``: one int64 buffer owned by the step (the new row's
  position is the cache's valid length); slow K/V and ``slow_lengths``: the video's own tensors;
* the new K/V rows go to staging buffers and are copied into the cache at ``past_length``
  by ``index_copy_`` with that device-side index, inside the same graph;
* with a :class:`~slowfast_trt.runtime.device_sampling.DecodeHead` (device decoding), the
  step also gathers its token's embedding into ``inputs_embeds`` first and samples the next
  token from the logits last, so one graph runs embed -> decoder -> sample and only the token
  id goes back to the host (:mod:`slowfast_trt.runtime.device_sampling`).

Modes (``SlowFastRuntime.load(..., decode_steps=...)``):

| mode         | past fed to the decoder          | launch                                   |
|--------------|----------------------------------|------------------------------------------|
| ``dynamic``  | the cache's valid prefix         | eager, shapes change every step          |
| ``static``   | the whole cache + ``past_length`` | eager (any backend; how CPU tests check it) |
| ``cuda-graph``| as ``static``                    | captured at a video's first step, replayed |

``auto`` is ``cuda-graph`` for TensorRT and torch engines on CUDA and ``dynamic`` elsewhere
(ONNX Runtime allocates and launches through its own allocator and stream inside a run, so
torch cannot capture it; on CPU ``static`` only adds masked rows). The cost of ``static``: attention reads all ``max_len``
cache rows every step (2 x layers x max_len x kv_heads x head_dim elements: 235 MB for 7B
in fp16 at 4096 rows, 1.5% of its 15 GB of weights read per step), where a length-aware
attention kernel would read only the valid ones.

A step is keyed by the addresses and shapes of everything bound (engine, cache buffers,
slow K/V): a graph stays valid exactly as long as those tensors live where it recorded
them, so a new video or cache gets a new capture, and the few most recent are kept. Each
captured step runs on an engine state of its own (:meth:`Engine.for_capture`: a TensorRT
execution context per graph, small on the one-row decode profile), because a graph replays
the activation memory and per-shape setup of the context it was captured on, and another
shape set on a shared context (another video's slow tokens, a text-only prompt) would
change them under it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from slowfast_trt.runtime.engine import Engine, EngineError

__all__ = ["DECODE_STEP_MODES", "StaticDecodeStep", "StaticStepCache", "resolve_decode_steps"]

DECODE_STEP_MODES = ("auto", "dynamic", "static", "cuda-graph")
_CAPTURING_BACKENDS = ("tensorrt", "torch")


def resolve_decode_steps(mode: str, backend: str, device: torch.device, engine: Engine) -> str:
    """The mode a runtime uses (module table); a ``ValueError`` naming why a mode cannot run."""
    if mode not in DECODE_STEP_MODES:
        raise ValueError(f"decode_steps must be one of {', '.join(DECODE_STEP_MODES)}, got {mode!r}")
    has_length = "past_length" in engine.input_names
    if mode == "auto":
        capture = backend in _CAPTURING_BACKENDS and device.type == "cuda" and has_length
        return "cuda-graph" if capture else "dynamic"
    if mode != "dynamic" and not has_length:
        raise ValueError(f"decode_steps={mode!r}: the decoder has no past_length input (an old export); re-export it")
    if mode == "cuda-graph":
        if device.type != "cuda":
            raise ValueError(f"decode_steps='cuda-graph' needs a CUDA device, the runtime is on {device}")
        if backend not in _CAPTURING_BACKENDS:
            raise ValueError(
                f"decode_steps='cuda-graph' needs the tensorrt or torch backend, not {backend!r} "
                "(ONNX Runtime synchronises on its own stream); use 'static' or 'dynamic'"
            )
    return mode


class StaticDecodeStep:
    """One-row decode steps of ``engine`` over the whole cache ``kv``; see the module docstring.

    ``fixed`` holds the bound inputs whose addresses do not change between steps (the
    runner's ``inputs_embeds`` buffer, slow K/V, slow lengths, cross rows and offsets, as the
    runner feeds them). With ``capture`` the first
    call runs eagerly (which also lets TensorRT and cuBLAS finish their lazy setup) and
    then records the step into a CUDA graph; later calls replay it.
    """

    def __init__(self, engine: Engine, kv, fixed: Mapping[str, torch.Tensor], logits: torch.Tensor, capture: bool,
                 head=None):
        spec, device = kv.spec, kv.spec.device
        self.head = head  # DecodeHead or None: embedding gather before, sampling after the decoder
        # A captured step gets its own engine state (a TensorRT context of its own).
        self.engine = engine.for_capture() if capture else engine
        self._owns_engine = self.engine is not engine
        self.kv, self.capture = kv, capture
        engine = self.engine
        self.position = torch.zeros((1, 1), dtype=torch.int64, device=device)
        self.past_length = self.position.view(1)  # the same value: the new row's position is its row
        self.logits = logits
        row = (1, 1, spec.kv_heads, spec.head_dim)
        self._new_keys = [torch.zeros(row, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
        self._new_values = [torch.zeros(row, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
        self.feeds = {"position_ids": self.position, "past_length": self.past_length}
        self.outputs = {"logits": logits}
        for i in range(spec.num_layers):
            self.feeds[f"past_key_{i}"], self.feeds[f"past_value_{i}"] = kv.keys[i], kv.values[i]
            self.outputs[f"new_key_{i}"], self.outputs[f"new_value_{i}"] = self._new_keys[i], self._new_values[i]
        self.feeds.update({name: fixed[name] for name in engine.input_names if name in fixed})
        missing = [name for name in engine.input_names if name not in self.feeds]
        if missing:
            raise EngineError(f"{engine.name}: a static decode step has no tensor for {', '.join(missing)}")
        self.graph = None
        self.replays = 0
        self.video = None  # set by StaticStepCache: the VideoState whose tensors are bound

    def run(self, position: int) -> torch.Tensor:
        """The step for the token whose embedding is in the bound ``inputs_embeds`` buffer, at
        ``position`` (= the cache's valid rows): logits (1, vocab); the new K/V row is in the
        cache at ``position``."""
        self.position.fill_(position)
        if self.graph is not None:
            self.graph.replay()
            self.replays += 1
        elif not self.capture:
            self._body()
        else:
            self._warm_up_and_capture()
        return self.logits

    def _body(self) -> None:
        if self.head is not None:
            self.head.embed()
        self.engine.run(self.feeds, self.outputs)
        kv = self.kv
        for cache, new in zip(kv.keys + kv.values, self._new_keys + self._new_values):
            cache.index_copy_(1, self.past_length, new)
        if self.head is not None:
            self.head.sample()

    def _warm_up_and_capture(self) -> None:
        # The eager run is this step's result. It runs on a side stream, as torch's capture
        # recipe asks, so lazy initialisation (cuBLAS handles, TensorRT's first enqueue for
        # these shapes) happens before capture. Capture records without executing.
        current = torch.cuda.current_stream(self.kv.spec.device)
        side = torch.cuda.Stream(self.kv.spec.device)
        side.wait_stream(current)
        with torch.cuda.stream(side), torch.no_grad():
            self._body()
        side.synchronize()  # TensorRT: enqueue once and wait before capturing the same shapes
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph), torch.no_grad():
                self._body()
        except Exception as exc:  # CUDA, torch or TensorRT refusing the capture: one line with the way out
            raise EngineError(
                f"{self.engine.name}: CUDA graph capture of the decode step failed ({type(exc).__name__}: {exc}); "
                "load with decode_steps='static' or 'dynamic'"
            ) from None
        self.graph = graph

    def release(self) -> None:
        if self.graph is not None:
            self.graph.reset()
        self.graph = None
        if self._owns_engine:
            self.engine.close()
            self._owns_engine = False


def _binding_key(engine: Engine, kv, fixed: Mapping[str, torch.Tensor], head=None) -> tuple:
    tensors = list(kv.keys) + list(kv.values) + [fixed[name] for name in sorted(fixed)]
    bound = (id(engine),) + tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors)
    return bound + ((head.key,) if head is not None else ())


class StaticStepCache:
    """The most recent :class:`StaticDecodeStep` per binding (engine, cache and slow tensor
    addresses and shapes); ``size`` of them, least recently used dropped first."""

    def __init__(self, capture: bool, size: int = 4):
        self.capture, self.size = capture, size
        self._steps: OrderedDict[tuple, StaticDecodeStep] = OrderedDict()

    def get(self, engine: Engine, kv, fixed: Mapping[str, torch.Tensor], logits: torch.Tensor,
            video=None, head=None) -> StaticDecodeStep:
        """The step for this binding, made (and, capturing, recorded at its first run) if new.
        ``video`` (a ``session.VideoState`` or None) is remembered for :meth:`drop_released`;
        ``head`` (a ``DecodeHead``: what it gathers and how it samples) is part of the binding."""
        self.drop_released()
        key = _binding_key(engine, kv, fixed, head)
        step = self._steps.pop(key, None)
        if step is None or step.kv is not kv or step.video is not video:
            if step is not None:
                step.release()
            step = StaticDecodeStep(engine, kv, fixed, logits, self.capture, head)
            step.video = video
        self._steps[key] = step
        while len(self._steps) > self.size:
            _, old = self._steps.popitem(last=False)
            old.release()
        return step

    def drop_released(self) -> None:
        """Forget steps whose cache or video was released: they hold its tensors alive."""
        for key, step in list(self._steps.items()):
            if step.kv.released or (step.video is not None and step.video.released):
                self._steps.pop(key).release()

    def release_all(self) -> None:
        """Forget every step (the runtime is closing: graphs and their contexts go)."""
        while self._steps:
            self._steps.popitem()[1].release()

    def __len__(self) -> int:
        return len(self._steps)
