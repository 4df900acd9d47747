"""Checkpoint loading: local directory or Hugging Face repo id, single or sharded safetensors,
``.bin`` (``weights_only=True``), dtype choice, the rename table with a shape check per key,
and the embedding / LM-head resize to the tokenizer length that upstream does at load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch

from .config import SlowFastConfig
from .export.convnext import ConvNeXtSpec
from .model import SlowFastModel
from .weight_names import plan_mapping, vision_relative_shapes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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


def build_model(config: SlowFastConfig, checkpoint_shapes, vocab_rows: int | None = None, device="cpu") -> SlowFastModel:
    """Build the model whose vision tower matches the checkpoint's tensors (on ``device``; 'meta' allocates nothing)."""
    spec = ConvNeXtSpec.from_shapes(vision_relative_shapes(checkpoint_shapes), source=config.source)
    with torch.device(device):
        return SlowFastModel(config, spec, vocab_rows=vocab_rows)


def load_model(
    ckpt: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    vocab_rows: int | None = None,
    device: str | torch.device = "cpu",
) -> SlowFastModel:
    """Load a checkpoint into :class:`SlowFastModel`.

    ``vocab_rows``: keep this many leading rows of the embedding and LM head (upstream resizes
    both to ``len(tokenizer)`` at load); None keeps the checkpoint's ``vocab_size``.
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
    state = {}
    for upstream, ours in report.mapping.items():
        tensor = reader.tensor(upstream)
        if ours in rows:
            tensor = tensor[: model_shapes[ours][0]]
        state[ours] = tensor.to(device=device, dtype=torch_dtype).contiguous()
    model.load_state_dict(state, strict=False, assign=True)
    if config.text.tie_word_embeddings:
        model.decoder.lm_head.weight = model.embed_tokens.weight
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"{directory}: parameters left unloaded: {', '.join(leftover[:8])}")
    return model.eval()
