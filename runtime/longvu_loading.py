"""Opening what ``LongVURuntime.load`` runs: a LongVU checkpoint (PyTorch modules behind the engine
interface) or a LongVU export folder (ONNX Runtime), after checking the folder is whole and ours."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from slowfast_trt.export.rebuild import reexport
from slowfast_trt.models.longvu import specs as S
from slowfast_trt.runtime.engine import TensorInfo, dtype_name, torch_dtype
from slowfast_trt.runtime.longvu_model import LongVURuntimeModel
from slowfast_trt.runtime.torch_engine import TorchEngine

__all__ = ["load_checkpoint", "load_export"]

_REBUILD = reexport()
_DEFAULT_EXTRA_POSITIONS = 1024  # default KV length: the longest prompt (L) + this


def _infos(tensors) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in tensors)


def _torch_engines(model, specs: dict) -> dict:
    """The eager modules as engines with the exported graphs' names (:mod:`...longvu.specs`)."""
    layers = model.config.text.num_layers

    def decoder(**feeds):
        logits, keys, values = model.decoder(
            feeds["inputs_embeds"], feeds["position_ids"], [feeds[f"past_key_{i}"] for i in range(layers)],
            [feeds[f"past_value_{i}"] for i in range(layers)], past_length=feeds["past_length"])
        out = {"logits": logits}
        for i in range(layers):
            out[f"new_key_{i}"], out[f"new_value_{i}"] = keys[i], values[i]
        return out

    functions = {
        S.DINO: lambda frames: {"features": model.dino(frames)},
        S.SIGLIP: lambda frames: {"features": model.siglip(frames)},
        S.CONNECTOR: lambda siglip_features, dino_features, cell_bias: dict(
            zip(("high_tokens", "low_tokens"), model.connector(siglip_features, dino_features, cell_bias))),
        S.DECODER: decoder,
    }
    return {name: TorchEngine(name, fn, _infos(specs[name].inputs), _infos(specs[name].outputs), model.device,
                              validate=name != S.DECODER) for name, fn in functions.items()}


def load_checkpoint(source, backend: str, device: torch.device, dtype: str, max_seq_len: int | None,
                    siglip=None, dino=None) -> LongVURuntimeModel:
    """A LongVU checkpoint and its towers, run eagerly by torch engines."""
    from slowfast_trt.models.longvu.checkpoint import load_model, resolve_folders
    from slowfast_trt.tokenizer import load_tokenizer

    if backend not in ("auto", "torch"):
        raise ValueError(f"{source}: backend {backend!r} needs an export folder (manifest.json); create one with "
                         f"python -m slowfast_trt.export --ckpt {source} --out DIR")
    folders = resolve_folders(source, siglip, dino)
    tokenizer = load_tokenizer(folders.checkpoint)
    model = load_model(folders.checkpoint, dtype=dtype, vocab_rows=len(tokenizer), device=device,
                       siglip=folders.siglip, dino=folders.dino)
    config, limit = model.config, model.config.text.max_position_embeddings
    length = max_seq_len if max_seq_len is not None else min(limit, config.max_length + _DEFAULT_EXTRA_POSITIONS)
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= limit:
        raise ValueError(f"max_seq_len must be an integer in [2, {limit}] (max_position_embeddings), got {length!r}")
    specs = S.subgraph_specs(config, model.siglip.out_dim, model.dino.out_dim, dtype_name(model.dtype), length,
                             model.vocab_rows)
    return LongVURuntimeModel(
        engines=_torch_engines(model, specs), config=config, tokenizer=tokenizer,
        embed_table=model.embed_tokens.weight.detach(), newline=model.connector.image_newline.detach(),
        max_seq_len=length, backend="torch", device=model.device, dtype=model.dtype)


def _embed_table(file: Path, dtype: torch.dtype) -> torch.Tensor:
    if not file.is_file():
        raise ValueError(f"{file}: embedding table missing; {_REBUILD}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memory map: torch warns that it is not writable
        table = torch.from_numpy(np.load(file, mmap_mode="r"))
    if table.dtype != dtype:
        raise ValueError(f"{file}: embedding table is {table.dtype}, the graphs are {dtype}; {_REBUILD}")
    return table


def _check_folder(path: Path, manifest: dict, expected_version: str) -> None:
    from slowfast_trt.export.manifest import FORMAT

    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: export manifest format {manifest.get('format')!r}, this package reads {FORMAT}; "
                         f"{_REBUILD}")
    if manifest.get("package_version") != expected_version:
        raise ValueError(f"{path}: export made by slowfast_trt {manifest.get('package_version')}, this is "
                         f"slowfast_trt {expected_version}; {_REBUILD}")
    for name, size in (manifest.get("files") or {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise ValueError(f"{path}: {name} is missing or changed since the export (manifest.json); {_REBUILD}")
    for name in (S.DINO, S.SIGLIP, S.CONNECTOR, S.DECODER, S.EMBED):
        if name not in manifest["subgraphs"]:
            raise ValueError(f"{path}: manifest.json lists no {name} subgraph; {_REBUILD}")


def load_export(path: Path, backend: str, device, threads: int | None, checkpoint, dtype: str | None,
                max_seq_len: int | None) -> LongVURuntimeModel:
    """A LongVU export folder run by ONNX Runtime."""
    from slowfast_trt._version import __version__
    from slowfast_trt.checkpoint_files import resolve_checkpoint
    from slowfast_trt.export.manifest import checkpoint_fingerprint, load_manifest
    from slowfast_trt.models.longvu.config import LongVUConfig
    from slowfast_trt.runtime.ort_engine import OrtEngine
    from slowfast_trt.tokenizer import load_tokenizer

    if not path.is_dir():
        raise ValueError(f"{path}: export folder not found")
    manifest = load_manifest(path)
    _check_folder(path, manifest, __version__)
    if checkpoint is not None:
        recorded, given = manifest["source"].get("hash"), checkpoint_fingerprint(resolve_checkpoint(checkpoint))
        if recorded != given:
            raise ValueError(f"export made from checkpoint {recorded}, the checkpoint given is {given}; {_REBUILD}")
    if backend == "tensorrt" or (backend == "auto" and manifest.get("engines")):
        raise ValueError(f"{path}: TensorRT engines for LongVU are not built yet; use backend='onnxruntime'")
    if backend == "torch":
        raise ValueError(f"{path}: backend 'torch' runs a checkpoint, not an export folder")
    graph_dtype = torch_dtype(manifest.get("dtype", "float32"))
    for name, value, fixed in (("dtype", dtype, str(graph_dtype).replace("torch.", "")),
                               ("max_seq_len", max_seq_len, int(manifest["max_seq_len"]))):
        if value is not None and value != fixed:
            raise ValueError(f"{name}={value!r}, but the export folder {path} was built with {name} {fixed}")
    device = torch.device(device or "cpu")
    config = LongVUConfig.from_file(path / "config.json")
    tokenizer = load_tokenizer(path)
    if manifest.get("vocab_rows") not in (None, len(tokenizer)):
        raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens, the graphs {manifest['vocab_rows']}; "
                         f"{_REBUILD}")
    subgraphs = manifest["subgraphs"]
    engines = {name: OrtEngine(name, path / subgraphs[name]["file"], device, threads)
               for name in (S.DINO, S.SIGLIP, S.CONNECTOR, S.DECODER)}
    embed = _embed_table(path / subgraphs[S.EMBED]["file"], graph_dtype)
    newline = torch.from_numpy(np.load(path / "image_newline.npy")) if (path / "image_newline.npy").is_file() else None
    if newline is None:
        raise ValueError(f"{path}: image_newline.npy missing; {_REBUILD}")
    return LongVURuntimeModel(engines=engines, config=config, tokenizer=tokenizer, embed_table=embed,
                              newline=newline.to(graph_dtype), max_seq_len=int(manifest["max_seq_len"]),
                              backend="onnxruntime", device=device, dtype=graph_dtype)
