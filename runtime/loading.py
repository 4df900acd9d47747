"""Opening what ``SlowFastRuntime.load`` runs: a checkpoint (torch engines) or an export folder
(TensorRT or ONNX Runtime), after checking that the folder is whole, ours and for this device."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from slowfast_trt.export.rebuild import rebuild_engines, reexport
from slowfast_trt.runtime.encoder import RuntimeModel

__all__ = ["load_checkpoint", "load_export"]

ENGINES = ("vision", "projector", "fast_pool", "slow_kv", "decoder")  # every export has these
_TORCH_DEFAULT_MAX_SEQ_LEN = 8192
_REBUILD = reexport()


def load_checkpoint(source, backend: str, device, dtype: str, max_seq_len: int | None) -> tuple[RuntimeModel, int]:
    """A checkpoint run eagerly by the torch engines; returns the model and its default frames."""
    from slowfast_trt.models.slowfast.checkpoint import load_model, resolve_checkpoint
    from slowfast_trt.models.slowfast.config import SlowFastConfig
    from slowfast_trt.runtime.torch_engine import torch_engines
    from slowfast_trt.host_allocator import keep_freed_memory
    from slowfast_trt.tokenizer import load_tokenizer

    if backend not in ("auto", "torch"):
        raise ValueError(
            f"{source}: backend {backend!r} needs an export folder (manifest.json); create one with "
            f"python -m slowfast_trt.export --ckpt {source} --out DIR"
        )
    directory = resolve_checkpoint(source)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        keep_freed_memory()  # eager intermediates reused, not faulted in per call (host_allocator.py)
    # config.json first: transformers reads it too while loading the tokenizer, and would blame
    # the tokenizer for a config that is a list, not JSON, or has a mistyped value.
    SlowFastConfig.from_file(directory / "config.json")
    tokenizer = load_tokenizer(directory)
    # Upstream resizes the embedding and LM head to len(tokenizer) at load, as the reference does.
    model = load_model(directory, dtype=dtype, vocab_rows=len(tokenizer), device=device)
    limit = model.config.text.max_position_embeddings
    length = max_seq_len if max_seq_len is not None else min(limit, _TORCH_DEFAULT_MAX_SEQ_LEN)
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= limit:
        raise ValueError(f"max_seq_len must be an integer in [2, {limit}] (max_position_embeddings), got {length!r}")
    runtime_model = RuntimeModel(
        engines=torch_engines(model), config=model.config, tokenizer=tokenizer,
        embed_table=model.embed_tokens.weight.detach(), max_seq_len=length, max_frames=None, backend="torch",
        device=model.device, dtype=model.dtype,
    )
    return runtime_model, model.config.training_frames


def load_export(path: Path, backend: str, device, threads: int | None, checkpoint) -> tuple[RuntimeModel, int]:
    """An export folder run by TensorRT or ONNX Runtime, after checking it is whole and ours;
    returns the model and the export's default frame count."""
    from slowfast_trt._version import __version__
    from slowfast_trt.models.slowfast.checkpoint import resolve_checkpoint
    from slowfast_trt.models.slowfast.config import SlowFastConfig
    from slowfast_trt.export.manifest import check_manifest, checkpoint_fingerprint, load_manifest
    from slowfast_trt.runtime.engine import torch_dtype
    from slowfast_trt.tokenizer import load_tokenizer

    if not path.is_dir():
        raise ValueError(f"{path}: export folder not found")
    manifest = load_manifest(path)
    ckpt_hash = checkpoint_fingerprint(resolve_checkpoint(checkpoint)) if checkpoint is not None else None
    check_manifest(manifest, __version__, ckpt_hash)
    _check_files(path, manifest)
    config = SlowFastConfig.from_file(path / "config.json")
    _check_config(path, config, manifest)
    tokenizer = load_tokenizer(path)
    if manifest.get("vocab_rows") not in (None, len(tokenizer)):
        raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens, the graphs {manifest['vocab_rows']} rows; {_REBUILD}")
    backend = _pick_backend(path, manifest, backend)
    device = _pick_device(backend, device)
    dtype = torch_dtype(manifest.get("dtype", "float32"))
    engines = _open_engines(path, manifest, backend, device, threads)
    embed = _embed_table(path / manifest["subgraphs"]["embed"]["file"], dtype)
    max_frames = int(manifest.get("max_frames", manifest["frames"]))
    model = RuntimeModel(engines, config, tokenizer, embed, int(manifest["max_seq_len"]), max_frames, backend, device,
                         dtype)
    return model, int(manifest["frames"])


def _check_files(path: Path, manifest: dict) -> None:
    for name, size in (manifest.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{path}: {name} is missing (listed in manifest.json); {_REBUILD}")
        if file.stat().st_size != size:
            raise ValueError(
                f"{path}: {name} has {file.stat().st_size} bytes, manifest.json says {size} "
                f"(the folder changed after export); {_REBUILD}"
            )
    for name in ENGINES + ("embed",):
        if name not in manifest["subgraphs"]:
            raise ValueError(f"{path}: manifest.json lists no {name} subgraph; {_REBUILD}")


def _check_config(path: Path, config, manifest: dict) -> None:
    import json

    ours = json.loads(json.dumps(asdict(config)))
    theirs = {k: v for k, v in (manifest.get("config") or {}).items() if k != "derived"}
    ours.pop("source", None)
    theirs.pop("source", None)
    if ours != theirs:
        raise ValueError(f"{path}: config.json does not match the manifest (files from another checkpoint?); {_REBUILD}")


def _pick_backend(path: Path, manifest: dict, backend: str) -> str:
    from slowfast_trt.runtime.trt_engine import import_tensorrt, tensorrt_available

    engines = manifest.get("engines") or {}
    if backend == "tensorrt":
        if not engines:
            raise ValueError(f"{path}: holds no TensorRT engines (exported with --backend onnxruntime or --onnx-only); "
                             "use backend='onnxruntime'")
        import_tensorrt()
        if not torch.cuda.is_available():
            raise ValueError("backend 'tensorrt' needs a CUDA device and a CUDA build of torch; none is available")
        return backend
    if backend == "auto":
        return "tensorrt" if engines and tensorrt_available() else "onnxruntime"
    if backend == "torch":
        source = (manifest.get("source") or {}).get("resolved", "CKPT")
        raise ValueError(f"{path}: backend 'torch' runs a checkpoint, not an export folder (this one came from {source})")
    return backend


def _pick_device(backend: str, device) -> torch.device:
    from slowfast_trt.runtime.ort_engine import cuda_provider_available

    if backend == "tensorrt":
        device = torch.device(device or "cuda")
        if device.type != "cuda":
            raise ValueError(f"backend 'tensorrt' runs on CUDA, got device {device}")
        return device
    if device is None:
        return torch.device("cuda" if cuda_provider_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not cuda_provider_available():
        raise ValueError("device cuda: ONNX Runtime's CUDA provider (onnxruntime-gpu) or a CUDA build of torch is missing")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device}")
    return device


def _open_engines(path: Path, manifest: dict, backend: str, device: torch.device, threads: int | None) -> dict:
    names = list(ENGINES)
    subgraphs = manifest["subgraphs"]
    if "decoder_nocross" in subgraphs:
        names.append("decoder_nocross")
    if backend == "tensorrt":
        from slowfast_trt.runtime.trt_engine import TrtEngine, check_engine_folder, with_decode_context

        files = manifest["engines"]
        missing = [n for n in ENGINES if n not in files]
        if missing:
            raise ValueError(f"{path}: the manifest lists no TensorRT engine for {', '.join(missing)}; {rebuild_engines(path)}")
        check_engine_folder(path, device)  # before deserializing: another TensorRT or GPU -> "rebuild"
        engines = {n: TrtEngine(n, path / files[n], device) for n in names if n in files}
        for name in ("decoder", "decoder_nocross"):  # static decode steps on the decode profile
            if name in engines:
                engines[name] = with_decode_context(engines[name], int(manifest["max_seq_len"]))
    else:
        from slowfast_trt.runtime.ort_engine import load_ort_engines

        engines = load_ort_engines(path, {n: subgraphs[n]["file"] for n in names}, device, threads, names)
    for name, engine in engines.items():
        listed = [t["name"] for t in subgraphs[name]["inputs"]] + [t["name"] for t in subgraphs[name]["outputs"]]
        found = list(engine.input_names) + list(engine.output_names)
        if sorted(listed) != sorted(found):
            raise ValueError(f"{path}: {name} graph tensors {sorted(found)} differ from the manifest's; {_REBUILD}")
    return engines


def check_count(frames) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")


def engine_vision_batch(path: Path, model: RuntimeModel) -> int | None:
    """TensorRT: the vision engine's largest batch (its profile's max), so the runtime chunks
    the frames by it; None for the other backends (any batch)."""
    import json

    if model.backend != "tensorrt":
        return None
    try:
        entry = json.loads((path / "engines.json").read_text(encoding="utf-8"))["engines"]["vision"]
        return int(entry["profiles"][0]["shapes"]["frames"]["max"][0])
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return None


def _embed_table(file: Path, dtype: torch.dtype) -> torch.Tensor:
    """The memory-mapped (vocab_rows, hidden) embedding table (bfloat16 stored as uint16 bits)."""
    if not file.is_file():
        raise ValueError(f"{file}: embedding table missing; {_REBUILD}")
    array = np.load(file, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memory map: torch warns that it is not writable
        table = torch.from_numpy(array)
    if dtype == torch.bfloat16:
        table = table.view(torch.bfloat16)
    if table.dtype != dtype:
        raise ValueError(f"{file}: embedding table is {table.dtype}, the graphs are {dtype}; {_REBUILD}")
    return table
