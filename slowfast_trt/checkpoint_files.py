"""Checkpoint folders of every family: where the weights are and how to read them lazily.

A local directory or a Hugging Face repo id (:func:`resolve_checkpoint`, through the hub's cache;
offline, an uncached id is a one-line error), single or sharded safetensors or ``.bin``
(``weights_only=True``). :class:`CheckpointReader` lists tensor names and shapes from the headers
alone and streams a tensor in row blocks with plain file reads (the file is never mapped, so
none of its pages count in the process's RSS) into buffers of their own (:func:`mapped_empty`),
converting the dtype block by block. :func:`safetensors_header_bytes` is the one reader of the
safetensors header format (u64 little-endian length, then JSON).
"""

from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path
from typing import Iterator

import torch

from slowfast_trt.dtypes import safetensors_dtype

__all__ = ["BLOCK_BYTES", "CheckpointReader", "mapped_empty", "read_safetensors_header", "resolve_checkpoint",
           "safetensors_header_bytes"]

BLOCK_BYTES = 16 << 20  # row blocks of streamed tensors (converted dtype)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def safetensors_header_bytes(path: Path) -> bytes:
    """The 8-byte length and the JSON header of a safetensors file, as stored."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: truncated safetensors file")
        length = int.from_bytes(raw, "little")
        if length > os.fstat(handle.fileno()).st_size - 8:
            raise ValueError(f"{path}: corrupt safetensors header (length {length})")
        return raw + handle.read(length)


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, parsed header) of a safetensors file."""
    try:
        raw = safetensors_header_bytes(path)
        return len(raw), json.loads(raw[8:])
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt or unreadable safetensors file ({exc})") from None


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
        if f not in self._st_headers:
            self._st_headers[f] = read_safetensors_header(f)
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
            src = safetensors_dtype(entry["dtype"])
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
