"""Export the Slow-Fast model as ONNX subgraphs (tensor table: :mod:`slowfast_trt.export.specs`).

:func:`export_all` writes, into one folder, for a given precision, most frames per video and
maximum sequence length:

* ``vision.onnx``: uint8 frames -> ConvNeXt features, normalisation folded in, dynamic N;
* ``projector.onnx``: features of N frames + ``grid_pool`` -> frame tokens (N, n', hid), the
  projector and each frame's 2D video pooling (a float32 product with the matrix);
* ``fast_pool.onnx``: frame tokens of T frames + ``temporal_pool`` (F, T) + ``spatial_pool`` ->
  fast tokens, no weights. The frame count lives in the host-built matrices
  (:func:`slowfast_trt.models.slowfast.visual_tokens.pooling_matrices`), not in the graphs, so
  one export serves every T from 1 to ``max_frames``; the slow tokens are the frame tokens;
* ``slow_kv.onnx``: slow tokens -> slow K/V of every hybrid layer, dynamic Ns (run once per
  video; the decoder never re-projects slow tokens);
* ``decoder.onnx``: one graph with dynamic seq/past/slow_tokens/rows for prefill and for
  ``attend``-mode decode steps; one ``SlowFastCrossAttention`` node per hybrid layer plus the
  model-local function ONNX Runtime runs it with;
* ``decoder_nocross.onnx``: the same decoder traced without cross-attention, for
  ``upstream``-mode decode steps (no slow inputs at all, so no per-step slow work and no
  empty tensors) and prompts without video. It stores no weights of its own: its initializers
  point into ``decoder.onnx.data`` (same bytes, same regions), so the two graphs cost one copy
  on disk. ``decoder.onnx`` also accepts R = 0 (tested in ONNX Runtime), and one attending row
  with ``slow_lengths = 0`` gives exactly the no-cross result (contract: n = 0 -> ctx = 0), a
  single-engine alternative for TensorRT where empty tensors are risky;
* ``embed_tokens.npy``: the (vocab_rows, hidden) embedding table, gathered by the runtime
  itself (a CPU gather from a memory-mapped file needs no device memory and no engine; a
  Gather graph would hold a second GPU copy of ~1 GiB for 7B), in the export precision.

Precisions: float32 and float16 (RMSNorm, softmax and the cross-attention stay float32 inside,
as in the torch modules). bfloat16 is refused, see :data:`specs.PRECISIONS`.

Memory: one subgraph at a time; the wrappers below hold references to the model's modules (no
copies) and the weights never enter torch's ONNX proto: they are written to the data file in
blocks (:mod:`slowfast_trt.export.onnx_io`). ``export_all`` converts ``model`` in place to
``precision`` when it is not already in it.

A model from :func:`slowfast_trt.models.slowfast.checkpoint.open_model` (parameters on the meta device, with
``model.checkpoint_weights``; what the CLI passes) is exported without ever being loaded: before
each subgraph the parameters of its part get their checkpoint values if small (below
``INLINE_BYTES``) and zero-page stubs otherwise (:func:`~slowfast_trt.models.slowfast.checkpoint.materialize`,
:func:`~slowfast_trt.models.slowfast.checkpoint.zero_stub`: real contiguous tensors that read as zeros and cost
no memory). The trace only needs shapes (tested: the same graphs and bytes as from the loaded
model); each large weight is then streamed from the checkpoint file into the data file in
16 MiB row blocks, converted to ``precision`` block by block (transposed ones scattered into
their columns). After the subgraph the part goes back to the meta device and freed memory is
returned to the OS. Peak memory is then the imports, the trace's activations and a few blocks,
whatever the model size (``python -m slowfast_trt.tools.bench_export_memory``, 2 CPU cores):
0.42 GiB during the full-size 28-layer decoder (13.2 GiB of fp16 weights), 0.83 GiB during the
7B's ConvNeXt-XXL vision tower (1.6 GiB; its trace's activations at full resolution).
"""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from slowfast_trt.models.slowfast.checkpoint import PARTS, materialize, parse_dtype, release, trim_memory
from slowfast_trt.models.slowfast.model import SlowFastModel
from slowfast_trt.preprocess import CLIP_MEAN, CLIP_STD
from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.export.onnx_io import (
    INLINE_BYTES,
    Blocks,
    ExportGraph,
    as_bytes,
    export_graph,
    large_tensors,
    row_blocks,
)
from slowfast_trt.models.slowfast.visual_tokens import pool_fast, project_frames


class VisionGraph(ExportGraph):
    """uint8 (N, S, S, 3) -> (N, g*g, C): ``normalize`` of preprocess.py folded into the tower's
    stem convolution (``ConvNeXtTower.forward`` with ``normalise``): Cast -> Transpose -> Conv, and no
    per-channel Sub/Div pass over the frames (those were 15% of ONNX Runtime's vision time).
    Cast first: TensorRT has no Transpose on UINT8 (trt_lint)."""

    def __init__(self, vision: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.vision = vision
        self.dtype = dtype

    def compute(self, frames: torch.Tensor) -> torch.Tensor:
        return self.vision(frames, normalise=(CLIP_MEAN, CLIP_STD))


class ProjectorGraph(ExportGraph):
    """(N, g*g, C_vis) features, grid_pool (n', g*g) -> frame tokens (N, n', hid): the projector,
    then each frame's 2D pooling as a float32 product (identity ``grid_pool`` for an image)."""

    def __init__(self, projector: nn.Module):
        super().__init__()
        self.projector = projector

    def compute(self, features: torch.Tensor, grid_pool: torch.Tensor) -> torch.Tensor:
        return project_frames(features, self.projector, grid_pool)


class FastPoolGraph(ExportGraph):
    """Frame tokens (T, n', hid), temporal_pool (F, T), spatial_pool (n'', n') -> fast tokens
    (F, n'', hid); no weights: the frame count is in the matrices, not in the graph."""

    def compute(self, frame_tokens: torch.Tensor, temporal_pool: torch.Tensor, spatial_pool: torch.Tensor):
        return pool_fast(frame_tokens, temporal_pool, spatial_pool)


class SlowKVGraph(ExportGraph):
    """(1, Ns, hid) -> slow_key_0, slow_value_0, slow_key_1, ... (1, Hkv, Ns, D)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def compute(self, slow_tokens: torch.Tensor):
        keys, values = self.decoder.slow_kv(slow_tokens)
        return tuple(t for pair in zip(keys, values) for t in pair)


class DecoderGraph(ExportGraph):
    """Flat-argument wrapper of :class:`HybridDecoder` in the order of the decoder spec."""

    def __init__(self, decoder: nn.Module, cross: bool):
        super().__init__()
        self.decoder = decoder
        self.cross = cross
        self.num_layers = len(decoder.layers)
        self.num_hybrid = len(decoder.hybrid_layer_ids)

    def compute(self, inputs_embeds, position_ids, past_length, *tensors):
        layers = 2 * self.num_layers
        past, rest = tensors[:layers], tensors[layers:]
        kwargs = {"past_length": past_length}
        if self.cross:
            slow = rest[: 2 * self.num_hybrid]
            slow_lengths, cross_rows, cross_row_offsets = rest[2 * self.num_hybrid :]
            kwargs.update(
                slow_keys=list(slow[0::2]),
                slow_values=list(slow[1::2]),
                slow_lengths=slow_lengths,
                cross_rows=cross_rows,
                cross_row_offsets=cross_row_offsets,
            )
        logits, keys, values = self.decoder(inputs_embeds, position_ids, list(past[0::2]), list(past[1::2]), **kwargs)
        return (logits, *(t for pair in zip(keys, values) for t in pair))


def _dynamic_axes(spec: S.SubgraphSpec) -> dict[str, dict[int, str]]:
    return {
        t.name: {axis: dim for axis, dim in enumerate(t.shape) if isinstance(dim, str)}
        for t in spec.inputs + spec.outputs
        if any(isinstance(dim, str) for dim in t.shape)
    }


def _example(spec: S.TensorSpec, sizes: dict[str, int], device, gen: torch.Generator) -> torch.Tensor:
    """A random input of ``spec`` with the named dims set from ``sizes`` (never 0 or 1)."""
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
    if spec.dtype == "uint8":
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)
    return torch.randn(shape, generator=gen).to(device=device, dtype=parse_dtype(spec.dtype))


Sources = Mapping[int, Blocks]  # id(parameter stub) -> its row blocks (see export_all)


def _device(module: nn.Module) -> torch.device:
    """Where ``module``'s loaded parameters are (CPU when they are all on the meta device)."""
    return next((p.device for p in module.parameters() if not p.is_meta), torch.device("cpu"))


def _write(
    module, spec: S.SubgraphSpec, args, out_dir: Path, share: Path | None = None, sources: Sources | None = None
) -> S.SubgraphSpec:
    shapes = {t.name: t.shape for t in spec.inputs + spec.outputs}
    sources = sources or {}
    streams = {name: sources[id(t)] for name, t in large_tensors(module).items() if id(t) in sources}
    data_file = spec.data_file or f"{spec.file}.data"  # weightless (fast_pool): written empty, removed
    export_graph(
        module,
        args,
        out_dir / spec.file,
        data_file,
        spec.input_names,
        spec.output_names,
        shapes,
        _dynamic_axes(spec),
        custom_op=spec.name == S.DECODER,
        share=share,
        streams=streams,
    )
    if not spec.data_file:
        empty = out_dir / data_file
        if empty.stat().st_size:
            raise ValueError(f"{spec.name}: a graph without weights wrote {empty.stat().st_size} bytes of data")
        empty.unlink()
    return spec


def _prepare(model: SlowFastModel, out_dir: Path, precision: str, max_frames: int, max_seq_len: int):
    specs = S.subgraph_specs(model.config, precision, max_frames, max_seq_len, vocab_rows=model.vocab_rows)
    if model.vision.spec.stride != S.VISION_STRIDE:
        raise ValueError(f"vision tower stride {model.vision.spec.stride} is not the supported {S.VISION_STRIDE}")
    dtype = parse_dtype(precision)
    if model.dtype != dtype:
        model.to(dtype)  # in place: parameters are replaced one by one, never two full models
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    return specs, torch.Generator().manual_seed(0)


def export_vision(
    model: SlowFastModel, out_dir: Path, precision: str, frames: int, max_seq_len: int, sources: Sources | None = None
) -> S.SubgraphSpec:
    specs, gen = _prepare(model, Path(out_dir), precision, frames, max_seq_len)
    spec = specs[S.VISION]
    args = [_example(spec.inputs[0], {"frames": 2}, _device(model.vision), gen)]
    return _write(VisionGraph(model.vision, model.dtype), spec, args, Path(out_dir), sources=sources)


# Trace sizes: every dynamic dimension of the projector and fast_pool at a size of its own, so
# none is specialised (the graphs are products; the matrices' values do not matter here).
_TRACE = {"frames": 3, "tokens_per_frame": 7, "fast_frames": 2, "fast_tokens_per_frame": 5}


def _trace_inputs(spec: S.SubgraphSpec, device, gen: torch.Generator) -> list:
    args = []
    for t in spec.inputs:
        if t.dtype == "float32" and t.name != "features":  # a pooling matrix
            args.append(torch.rand(tuple(_TRACE[d] if isinstance(d, str) else d for d in t.shape), generator=gen).to(device))
        else:
            args.append(_example(t, _TRACE, device, gen))
    return args


def export_projector(
    model: SlowFastModel, out_dir: Path, precision: str, max_frames: int, max_seq_len: int,
    sources: Sources | None = None,
) -> S.SubgraphSpec:
    specs, gen = _prepare(model, Path(out_dir), precision, max_frames, max_seq_len)
    spec = specs[S.PROJECTOR]
    args = _trace_inputs(spec, _device(model.projector), gen)
    return _write(ProjectorGraph(model.projector), spec, args, Path(out_dir), sources=sources)


def export_fast_pool(
    model: SlowFastModel, out_dir: Path, precision: str, max_frames: int, max_seq_len: int,
    sources: Sources | None = None,
) -> S.SubgraphSpec:
    specs, gen = _prepare(model, Path(out_dir), precision, max_frames, max_seq_len)
    spec = specs[S.FAST_POOL]
    return _write(FastPoolGraph(), spec, _trace_inputs(spec, "cpu", gen), Path(out_dir), sources=sources)


def export_slow_kv(
    model: SlowFastModel, out_dir: Path, precision: str, frames: int, max_seq_len: int, sources: Sources | None = None
) -> S.SubgraphSpec:
    specs, gen = _prepare(model, Path(out_dir), precision, frames, max_seq_len)
    spec = specs[S.SLOW_KV]
    args = [_example(spec.inputs[0], {"slow_tokens": 7}, _device(model.decoder), gen)]
    return _write(SlowKVGraph(model.decoder), spec, args, Path(out_dir), sources=sources)


def decoder_example_inputs(spec: S.SubgraphSpec, device, gen: torch.Generator, seq=3, past=2, slow=5, rows=2) -> list:
    """Trace inputs: sizes distinct and > 1 so no dimension is specialised; rows < seq attend."""
    sizes = {"seq": seq, "past": past, "slow_tokens": slow, "rows": rows}
    args = []
    for t in spec.inputs:
        if t.name == "position_ids":
            args.append(torch.arange(past, past + seq, device=device)[None])
        elif t.name == "past_length":
            args.append(torch.tensor([past], device=device))
        elif t.name == "slow_lengths":
            args.append(torch.tensor([slow], dtype=torch.int32, device=device))
        elif t.name == "cross_rows":
            args.append(torch.arange(seq - rows, seq, device=device))
        elif t.name == "cross_row_offsets":
            args.append(torch.tensor([0, rows], dtype=torch.int32, device=device))
        else:
            args.append(_example(t, sizes, device, gen))
    return args


def export_decoder(
    model: SlowFastModel,
    out_dir: Path,
    precision: str,
    frames: int,
    max_seq_len: int,
    cross: bool = True,
    sources: Sources | None = None,
) -> S.SubgraphSpec:
    """``decoder.onnx`` (cross=True) or ``decoder_nocross.onnx`` (cross=False; needs
    ``decoder.onnx`` already written in ``out_dir``, whose data file it shares)."""
    out_dir = Path(out_dir)
    specs, gen = _prepare(model, out_dir, precision, frames, max_seq_len)
    spec = specs[S.DECODER if cross else S.DECODER_NOCROSS]
    share = None
    if not cross:
        share = out_dir / specs[S.DECODER].file
        if not share.is_file():
            raise ValueError(f"export_decoder(cross=False): {share} must be exported first (its data file is shared)")
    args = decoder_example_inputs(spec, _device(model.decoder), gen)
    return _write(DecoderGraph(model.decoder, cross), spec, args, out_dir, share=share, sources=sources)


def save_npy(path: Path, shape, dtype: torch.dtype, blocks: Iterable[torch.Tensor]) -> None:
    """An ``.npy`` file (format 1.0, what ``np.save`` writes) from consecutive row blocks."""
    header = {
        "descr": np.lib.format.dtype_to_descr(torch.empty((), dtype=dtype).numpy().dtype),
        "fortran_order": False,
        "shape": tuple(int(d) for d in shape),
    }
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for block in blocks:
            handle.write(as_bytes(block))


def save_embedding(
    model: SlowFastModel, out_dir: Path, precision: str, frames: int, max_seq_len: int, sources: Sources | None = None
) -> S.SubgraphSpec:
    """``embed_tokens.npy``: (vocab_rows, hidden) in the export precision (``np.load(mmap_mode="r")``).

    A model from ``open_model`` streams the table from the checkpoint (nothing loaded)."""
    specs, _ = _prepare(model, Path(out_dir), precision, frames, max_seq_len)
    spec = specs[S.EMBED]
    weight = model.embed_tokens.weight
    if weight.is_meta:
        weights = model.checkpoint_weights
        blocks = weights.row_blocks("embed_tokens.weight")
        save_npy(Path(out_dir) / spec.file, weights.shape("embed_tokens.weight"), weights.dtype, blocks)
    else:
        save_npy(Path(out_dir) / spec.file, weight.shape, weight.dtype, row_blocks(weight))
    return spec


# Subgraph -> the parts of the model (prefixes of parameter names) it reads.
_STEP_PARTS = {
    S.EMBED: (),
    S.VISION: (PARTS["vision"],),
    S.PROJECTOR: (PARTS["projector"],),
    S.FAST_POOL: (),
    S.SLOW_KV: (PARTS["decoder"],),
    S.DECODER: (PARTS["decoder"],),
    S.DECODER_NOCROSS: (PARTS["decoder"],),
}


def is_lazy(model: SlowFastModel) -> bool:
    """True for a model from ``open_model`` with parameters still on the meta device."""
    return hasattr(model, "checkpoint_weights") and any(p.is_meta for p in model.parameters())


def _stub_sources(model: SlowFastModel, stubs: set[str]) -> dict[int, Blocks]:
    weights = model.checkpoint_weights
    return {
        id(p): partial(weights.row_blocks, name)
        for name, p in model.named_parameters(remove_duplicate=False)
        if name in stubs
    }


def export_all(
    model: SlowFastModel,
    out_dir: Path,
    precision: str,
    max_frames: int,
    max_seq_len: int,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, S.SubgraphSpec]:
    """Export every subgraph (and the embedding table) into ``out_dir``; returns their specs.
    The graphs serve every video of 1..``max_frames`` frames.

    ``model``: loaded, or from :func:`slowfast_trt.models.slowfast.checkpoint.open_model` (lazy: each part is
    materialised as stubs + small tensors just before its subgraph and released right after,
    large weights streamed from the checkpoint; see the module docstring).
    """
    steps = [
        (S.EMBED, save_embedding, {}),
        (S.VISION, export_vision, {}),
        (S.PROJECTOR, export_projector, {}),
        (S.FAST_POOL, export_fast_pool, {}),
        (S.SLOW_KV, export_slow_kv, {}),
        (S.DECODER, export_decoder, {"cross": True}),
        (S.DECODER_NOCROSS, export_decoder, {"cross": False}),
    ]
    lazy = is_lazy(model)
    if lazy:
        dtype = parse_dtype(precision)
        if model.checkpoint_weights.dtype != dtype or model.dtype != dtype:
            release(model)  # parts already loaded would not match the streamed precision
            model.to(dtype)
            model.checkpoint_weights.dtype = dtype
    done = {}
    for n, (name, fn, kwargs) in enumerate(steps, 1):
        progress(f"[{n}/{len(steps)}] {name}")
        if not lazy:
            done[name] = fn(model, Path(out_dir), precision, max_frames, max_seq_len, **kwargs)
            gc.collect()  # free the trace and the proto before the next graph
            continue
        prefixes = _STEP_PARTS[name]
        try:
            stubs = materialize(model, prefixes, stub_bytes=INLINE_BYTES) if prefixes else set()
            sources = _stub_sources(model, stubs)
            done[name] = fn(model, Path(out_dir), precision, max_frames, max_seq_len, sources=sources, **kwargs)
        finally:
            sources = None
            if prefixes:
                release(model, prefixes)  # back to meta, gc, malloc_trim
            else:
                trim_memory()
    return done
