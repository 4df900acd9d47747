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
import json
import math
import mmap
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from .config import SlowFastConfig
from .export.convnext import ConvNeXtSpec
from .model import SlowFastModel
from .weight_names import plan_mapping, vision_relative_shapes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Parts of :class:`SlowFastModel` that can be loaded alone: name -> parameter-name prefix.
PARTS = {"vision": "vision.", "projector": "projector.", "embed": "embed_tokens.", "decoder": "decoder."}
BLOCK_BYTES = 16 << 20  # row blocks of streamed tensors (converted dtype)
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r} (supported: {', '.join(DTYPES)})")
    return DTYPES[name]


def resolve_checkpoint(ckpt: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a Hugging Face repo id when it is not one."""
    path = Path(ckpt)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{ckpt}: checkpoint must be a directory (with config.json and weights), not a file")
    text = str(ckpt)
    if text.count("/") != 1 or text.startswith((".", "/")):
        raise ValueError(f"{ckpt}: checkpoint directory not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise ValueError(
            f"{ckpt}: not a local directory, and downloading it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from None


def _weight_files(directory: Path) -> tuple[str, list[Path]]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{index}: corrupt shard index ({exc})") from None
        files = sorted({directory / name for name in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise ValueError(f"{index}: shard {f.name} listed in the index is missing")
        return "safetensors", files
    single = sorted(directory.glob("*.safetensors"))
    if single:
        return "safetensors", single
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        return "bin", bins
    raise ValueError(f"{directory}: no weights found (model.safetensors, a sharded index, or pytorch_model*.bin)")


class CheckpointReader:
    """Tensor names, shapes and data of a checkpoint directory, read lazily from safetensors."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.kind, self.files = _weight_files(directory)
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._bin_cache: dict[Path, dict] = {}
        self._st_headers: dict[Path, tuple[int, dict]] = {}
        for f in self.files:
            for name, shape in self._read_header(f):
                self._where[name] = f
                self._shapes[name] = shape

    def _read_header(self, f: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
        if self.kind == "bin":
            for name, tensor in self._load_bin(f).items():
                yield name, tuple(tensor.shape)
            return
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as handle:
                for name in handle.keys():
                    yield name, tuple(handle.get_slice(name).get_shape())
        except Exception as exc:
            raise ValueError(f"{f}: corrupt or unreadable safetensors file ({exc})") from None

    def _load_bin(self, f: Path) -> dict:
        if f not in self._bin_cache:
            try:
                self._bin_cache[f] = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise ValueError(f"{f}: cannot load with weights_only=True ({exc})") from None
        return self._bin_cache[f]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def tensor(self, name: str) -> torch.Tensor:
        f = self._where[name]
        if self.kind == "bin":
            return self._load_bin(f)[name]
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as handle:
            return handle.get_tensor(name)

    def _st_header(self, f: Path) -> tuple[int, dict]:
        """(offset of the data section, header) of a safetensors file (format: u64 LE size, JSON)."""
        if f not in self._st_headers:
            try:
                with open(f, "rb") as handle:
                    size = int.from_bytes(handle.read(8), "little")
                    header = json.loads(handle.read(size))
            except (OSError, ValueError) as exc:
                raise ValueError(f"{f}: corrupt or unreadable safetensors file ({exc})") from None
            self._st_headers[f] = (8 + size, header)
        return self._st_headers[f]

    def row_blocks(
        self, name: str, rows: int | None = None, dtype: torch.dtype | None = None, max_bytes: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Tensor ``name`` (its first ``rows`` rows) as consecutive blocks along dim 0, each
        converted to ``dtype`` and at most about ``max_bytes``: a tensor is never held whole.

        safetensors files are read with plain reads into a fresh buffer per block (the page
        cache holds the file, not this process), each block freed before the next is read
        (once the consumer drops it); ``.bin`` files are sliced from the loaded dict.
        """
        shape = self._shapes[name]
        lead = (shape[0] if shape else 1) if rows is None else rows
        rest = tuple(shape[1:])
        if self.kind == "bin":
            tensor = self._load_bin(self._where[name])[name]
            tensor = tensor if rows is None else tensor[:rows]
            src_bytes = tensor.element_size()
        else:
            start, header = self._st_header(self._where[name])
            entry = header[name]
            src = _ST_DTYPES.get(entry["dtype"])
            if src is None:
                raise ValueError(f"{self._where[name]}: tensor {name} has unsupported dtype {entry['dtype']}")
            src_bytes = torch.empty((), dtype=src).element_size()
        out_bytes = torch.empty((), dtype=dtype).element_size() if dtype is not None else src_bytes
        row_elems = math.prod(rest)
        step = max(1, (max_bytes or BLOCK_BYTES) // max(1, row_elems * max(src_bytes, out_bytes)))
        if self.kind == "bin":
            for a in range(0, lead, step):
                block = tensor[a : a + step] if shape else tensor
                yield block if dtype is None else block.to(dtype)
            return
        with open(self._where[name], "rb", buffering=0) as handle:
            handle.seek(start + entry["data_offsets"][0])
            for a in range(0, lead, step):
                count = min(step, lead - a)
                raw = mapped_empty((count * row_elems * src_bytes,), torch.uint8)
                view, done = memoryview(raw.numpy()), 0
                while done < len(view):
                    got = handle.readinto(view[done:])
                    if not got:
                        raise ValueError(f"{self._where[name]}: tensor {name} is truncated")
                    done += got
                del view
                block = raw.view(src).view((count, *rest) if shape else ())
                del raw
                if dtype is not None and dtype != src:
                    block = mapped_empty(block.shape, dtype).copy_(block)  # the raw block is unmapped here
                yield block
                del block  # before the next read: one block alive at a time


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
        raise ValueError(f"{directory}: parameters left unloaded: {', '.join(leftover[:8])}")
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


def mapped_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor in its own private anonymous mapping (``mmap``), unmapped as soon
    as the tensor is freed: block buffers never stay in malloc's heap (glibc keeps freed blocks
    below its mmap threshold, up to 32 MiB, for reuse instead of returning them). Where
    ``MAP_ANONYMOUS`` is missing: ``torch.zeros``.
    """
    shape = tuple(int(d) for d in shape)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buffer, dtype=dtype).view(shape)  # the tensor keeps the mapping alive


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
