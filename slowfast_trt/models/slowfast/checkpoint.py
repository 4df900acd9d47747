"""Checkpoint loading: local directory or Hugging Face repo id, single or sharded safetensors,
``.bin`` (``weights_only=True``), dtype choice, the rename table with a shape check per key,
and the embedding / LM-head resize to the tokenizer length that upstream does at load.

Loading one part at a time (the exporter's way, so that the whole model is never in memory):
:func:`open_model` builds the model on the meta device and checks every tensor name and shape
against the checkpoint, reading no weight bytes; :func:`materialize` then assigns the tensors
of some parameter-name prefixes (:data:`PARTS`), :func:`release` puts them back on the meta
device and returns the memory to the OS. ``load_model(..., parts=...)`` does the first two.
:meth:`CheckpointReader.row_blocks` streams a tensor from safetensors in row blocks with plain
file reads (the file is never mapped, so none of its pages count in the process's RSS) into
buffers of their own (:func:`mapped_empty`), converting the dtype block by block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import mmap
import os
from typing import Iterable, Iterator

import torch
from torch import nn

from slowfast_trt.checkpoint_files import CheckpointReader, mapped_empty, resolve_checkpoint
from slowfast_trt.dtypes import parse_model_dtype
from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.convnext import ConvNeXtSpec
from slowfast_trt.models.slowfast.model import SlowFastModel
from slowfast_trt.models.slowfast.weight_names import plan_mapping, upstream_name, vision_relative_shapes

# Parts of :class:`SlowFastModel` that can be loaded alone: name -> parameter-name prefix.
PARTS = {"vision": "vision.", "projector": "projector.", "embed": "embed_tokens.", "decoder": "decoder."}


parse_dtype = parse_model_dtype  # the model dtypes of slowfast_trt.dtypes


def build_model(config: SlowFastConfig, checkpoint_shapes, vocab_rows: int | None = None, device="cpu") -> SlowFastModel:
    """Build the model whose vision tower matches the checkpoint's tensors (on ``device``; 'meta' allocates nothing)."""
    spec = ConvNeXtSpec.from_shapes(vision_relative_shapes(checkpoint_shapes), source=config.source)
    with torch.device(device):
        return SlowFastModel(config, spec, vocab_rows=vocab_rows)


class CheckpointWeights:
    """Where each parameter of a model built by :func:`open_model` lives in its checkpoint.

    ``sources``: our parameter name -> (upstream tensor name, leading rows kept or None); a
    tied LM head maps to the embedding's tensor. ``dtype``: what the blocks are converted to.
    """

    def __init__(self, reader: CheckpointReader, sources: dict[str, tuple[str, int | None]], dtype: torch.dtype):
        self.reader, self.sources, self.dtype = reader, sources, dtype

    def shape(self, name: str) -> tuple[int, ...]:
        upstream, rows = self.sources[name]
        shape = self.reader.shapes[upstream]
        return shape if rows is None else (rows, *shape[1:])

    def row_blocks(self, name: str, max_bytes: int | None = None) -> Iterator[torch.Tensor]:
        """Parameter ``name`` in row blocks of ``self.dtype`` (see :meth:`CheckpointReader.row_blocks`)."""
        upstream, rows = self.sources[name]
        return self.reader.row_blocks(upstream, rows=rows, dtype=self.dtype, max_bytes=max_bytes)

    def tensor(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """Parameter ``name`` in ``self.dtype``: one allocation, filled block by block."""
        out = torch.empty(self.shape(name), dtype=self.dtype, device=device)
        fill_rows(out, self.row_blocks(name))
        return out


def fill_rows(out: torch.Tensor, blocks: Iterable[torch.Tensor]) -> torch.Tensor:
    """Copy consecutive dim-0 ``blocks`` into ``out`` (dtype/device converted by ``copy_``)."""
    if out.dim() == 0:
        for block in blocks:
            out.copy_(block)
        return out
    row = 0
    for block in blocks:
        out[row : row + block.shape[0]].copy_(block)
        row += block.shape[0]
    if row != out.shape[0]:
        raise ValueError(f"expected {out.shape[0]} rows, got {row}")
    return out


def open_model(
    ckpt: str | os.PathLike, dtype: str | torch.dtype = "float32", vocab_rows: int | None = None
) -> SlowFastModel:
    """The model of a checkpoint on the meta device, in ``dtype``, with no weight read yet.

    Names and shapes are checked as in :func:`load_model` (same errors). The model carries
    ``model.checkpoint_weights`` (:class:`CheckpointWeights`) for :func:`materialize`.
    """
    directory = resolve_checkpoint(ckpt)
    torch_dtype = parse_dtype(dtype)
    config = SlowFastConfig.from_file(directory / "config.json")
    reader = CheckpointReader(directory)
    if vocab_rows is not None and not 0 < vocab_rows <= config.text.vocab_size:
        raise ValueError(f"{directory}: tokenizer length {vocab_rows} exceeds config vocab_size {config.text.vocab_size}")
    model = build_model(config, reader.shapes, vocab_rows=vocab_rows, device="meta")
    model_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    rows = {"embed_tokens.weight": model.vocab_rows, "decoder.lm_head.weight": model.vocab_rows}
    report = plan_mapping(reader.shapes, model_shapes, row_overrides=rows)
    if not report.ok:
        raise ValueError(report.error_message(str(directory)))
    sources: dict[str, tuple[str, int | None]] = {}
    for upstream, ours in report.mapping.items():
        keep = model_shapes[ours][0] if ours in rows and reader.shapes[upstream][0] != model_shapes[ours][0] else None
        sources[ours] = (upstream, keep)
    if config.text.tie_word_embeddings and "embed_tokens.weight" in sources:
        sources.setdefault("decoder.lm_head.weight", sources["embed_tokens.weight"])
    leftover = [n for n, _ in model.named_parameters(remove_duplicate=False) if n not in sources]
    if leftover:
        names = ", ".join(upstream_name(n) for n in leftover[:8])
        raise ValueError(f"{directory}: checkpoint tensors missing (parameters left unloaded): {names}")
    model.to(torch_dtype)  # meta: no bytes
    model.checkpoint_weights = CheckpointWeights(reader, sources, torch_dtype)
    return model.eval()


def _prefixed(model: nn.Module, prefixes: Iterable[str]) -> list[tuple[str, nn.Module, str]]:
    """(name, owning module, attribute) of every parameter under ``prefixes`` (tied ones under each name)."""
    prefixes = tuple(prefixes)
    out = []
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name.startswith(prefixes):
            owner, _, attr = name.rpartition(".")
            out.append((name, model.get_submodule(owner), attr))
    return out


def materialize(
    model: SlowFastModel,
    prefixes: Iterable[str] = ("",),
    device: str | torch.device = "cpu",
    stub_bytes: int | None = None,
) -> set[str]:
    """Assign the checkpoint tensors of the parameters whose names start with one of ``prefixes``
    (e.g. ``PARTS["decoder"]``; ``""`` is everything); other parameters are left as they are.

    ``stub_bytes``: parameters of at least this many bytes get a stub instead (:func:`zero_stub`:
    reads as zeros, costs no memory), for a caller that only needs their shapes, e.g. to trace
    the module, and reads their bytes later with ``model.checkpoint_weights.row_blocks(name)``.
    Returns the names given stubs.
    """
    weights: CheckpointWeights = model.checkpoint_weights
    loaded: dict[tuple[str, int | None], torch.Tensor] = {}  # a tied tensor is loaded once
    stubs = set()
    for name, owner, attr in _prefixed(model, prefixes):
        old = owner._parameters[attr]
        shape = weights.shape(name)
        itemsize = torch.empty((), dtype=weights.dtype).element_size()
        if stub_bytes is not None and math.prod(shape) * itemsize >= stub_bytes:
            value = zero_stub(shape, weights.dtype, device)
            stubs.add(name)
        else:
            key = weights.sources[name]
            if key not in loaded:
                loaded[key] = nn.Parameter(weights.tensor(name, device), requires_grad=old.requires_grad)
            value = loaded[key]
        owner._parameters[attr] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, old.requires_grad)
    return stubs


def zero_stub(shape, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
    """A contiguous all-zero tensor that adds nothing to the process's RSS while only read.

    On CPU: :func:`mapped_empty`, never written, so the kernel maps its shared zero page on
    reads and kernels that read it (a trace's matmuls) run at full speed without memory.
    Elsewhere (or without ``MAP_ANONYMOUS``): ``expand`` of one zero element.
    """
    shape = tuple(int(d) for d in shape)
    if torch.device(device).type != "cpu" or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.zeros((), dtype=dtype, device=device).expand(shape)
    return mapped_empty(shape, dtype)


def release(model: SlowFastModel, prefixes: Iterable[str] = ("",)) -> None:
    """Put the parameters under ``prefixes`` back on the meta device and return the freed memory
    to the OS (``gc.collect()``, then glibc's ``malloc_trim`` where there is one)."""
    for _, owner, attr in _prefixed(model, prefixes):
        param = owner._parameters[attr]
        if not param.is_meta:
            meta = torch.empty(param.shape, dtype=param.dtype, device="meta")
            owner._parameters[attr] = nn.Parameter(meta, requires_grad=param.requires_grad)
        param = None
    trim_memory()


def trim_memory() -> None:
    """``gc.collect()`` and, on glibc, ``malloc_trim(0)`` (freed heap pages back to the OS)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.append(libc)
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            _LIBC.append(None)
    return _LIBC[0]


def load_model(
    ckpt: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    vocab_rows: int | None = None,
    device: str | torch.device = "cpu",
    parts: Iterable[str] | None = None,
) -> SlowFastModel:
    """Load a checkpoint into :class:`SlowFastModel`.

    ``vocab_rows``: keep this many leading rows of the embedding and LM head (upstream resizes
    both to ``len(tokenizer)`` at load); None keeps the checkpoint's ``vocab_size``.
    ``parts``: load only these parts (keys of :data:`PARTS`, e.g. ``{"decoder"}``); the other
    parameters stay on the meta device, and ``model.checkpoint_weights`` can load them later
    (:func:`materialize`). None (default) loads everything.
    """
    if parts is not None:
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown model parts {unknown} (known: {', '.join(PARTS)})")
    # open_model checks every name and shape; then read the tensors of the requested parts.
    model = open_model(ckpt, dtype=dtype, vocab_rows=vocab_rows)
    materialize(model, [PARTS[p] for p in parts] if parts is not None else [""], device=device)
    return model
