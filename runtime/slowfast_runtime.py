"""``SlowFastRuntime``: ask questions about videos with TensorRT, ONNX Runtime or PyTorch.

Usage::

    from slowfast_trt import SlowFastRuntime

    rt = SlowFastRuntime.load("engines/")            # export folder: TensorRT, else ONNX Runtime
    result = rt.generate(video="clip.mp4", question="What happens?", max_new_tokens=64)
    print(result.text, result.token_ids, result.timings_ms)

    for piece in rt.stream(video="clip.mp4", question="Describe it."):
        print(piece, end="", flush=True)

    with rt.open_video("clip.mp4") as session:       # encode once, ask many times
        session.ask("What happens?")
        session.ask("And then?")                      # prefills only the new turn

    with rt.open_stream(window=32) as stream:         # a live window: frames pushed as they come
        stream.push(frame)                            # vision, pooling and slow K/V of this frame now
        stream.ask("What is happening now?")          # fast pooling + prefill only

``backend="torch"`` runs the checkpoint's own modules eagerly (the reference semantics,
token for token). Export folders come from ``python -m slowfast_trt.export``; one export
serves every frame count from 1 to its ``max_frames`` (a file is sampled at the export's
default count unless ``frames=`` says otherwise). ``video`` is a path, frames in memory (a
uint8 (T, H, W, 3) array, a torch tensor on CPU or CUDA, a DLPack array, PIL images; see
:mod:`slowfast_trt.frames`), or None for a text-only question.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slowfast_trt.detokenize import TextStream
from slowfast_trt.prompt import DEFAULT_SYSTEM, Conversation
from slowfast_trt.export.rebuild import rebuild_engines, reexport
from slowfast_trt.runtime.decoder_runner import DecoderRunner
from slowfast_trt.frames import is_frame_input
from slowfast_trt.runtime.encoder import RuntimeModel, VideoState, check_frame_count, check_frames
from slowfast_trt.runtime.session import RuntimeResult, VideoSession, sampling_params
from slowfast_trt.models.slowfast.sequence import check_decode_mode
from slowfast_trt.video import is_image_path, load_image, load_video

__all__ = ["BACKENDS", "SlowFastRuntime", "load_checkpoint", "load_export"]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
_ENGINES = ("vision", "projector", "fast_pool", "slow_kv", "decoder")  # every export has these
_TORCH_DEFAULT_MAX_SEQ_LEN = 8192
_REBUILD = reexport()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class SlowFastRuntime:
    """A loaded model: engines, tokenizer and a spare KV cache. One generation at a time."""

    def __init__(self, model: RuntimeModel, decode_mode: str = "upstream", default_frames: int | None = None,
                 source: str = "", decode_steps: str = "auto"):
        self._model = model
        self._runner = DecoderRunner(model, decode_steps)
        self.decode_mode = check_decode_mode(decode_mode)
        self.default_frames = default_frames or model.config.training_frames
        self.source = source
        self._spare_caches: list = []  # at most one KV cache kept for reuse

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str | os.PathLike, backend: str = "auto", device: str | torch.device | None = None, *,
             decode_mode: str = "upstream", dtype: str | None = None, frames: int | None = None,
             max_seq_len: int | None = None, threads: int | None = None,
             checkpoint: str | os.PathLike | None = None, vision_batch: int | None = None,
             decode_steps: str = "auto") -> "SlowFastRuntime":
        """Load an export folder or a checkpoint.

        Args:
            source: export folder (``manifest.json`` inside) or checkpoint folder / Hub id.
            backend: ``auto`` (TensorRT when the folder has engines and TensorRT and CUDA are
                present, else ONNX Runtime; a checkpoint means ``torch``), ``tensorrt``,
                ``onnxruntime`` or ``torch``.
            device: ``cpu``, ``cuda``, ``cuda:N``; default CUDA when the backend can use it.
            decode_mode: ``upstream`` (generated tokens do not cross-attend, as upstream
                generates) or ``attend`` (they attend to the cached slow K/V).
            dtype, frames, max_seq_len: the weight dtype (default float32), the frames
                sampled from a video file (default: the checkpoint's training frames, or the
                export's default count) and the KV-cache length (default min(8192,
                max_position_embeddings)); an export fixes dtype and max_seq_len (a different
                value is an error) and serves 1..its max_frames frames.
            threads: ONNX Runtime intra-op threads (default: its own choice).
            checkpoint: export folders only: also check that the folder was exported from
                this checkpoint (its fingerprint is in the manifest).
            vision_batch: run the vision tower on this many frames at a time (bounds its
                activation memory, e.g. on Jetson); default all frames in one call.
            decode_steps: how one-token steps run (:mod:`slowfast_trt.runtime.decode_graph`):
                ``auto`` (``cuda-graph`` for TensorRT and torch on CUDA, else ``dynamic``),
                ``dynamic`` (the past is the cache's valid rows), ``static`` (the whole cache
                with a length mask, eager) or ``cuda-graph`` (static, captured once per video
                and replayed).
        """
        if vision_batch is not None and (isinstance(vision_batch, bool) or not isinstance(vision_batch, int) or vision_batch < 1):
            raise ValueError(f"vision_batch must be a positive integer or None, got {vision_batch!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        path = Path(source)
        # A folder with ONNX graphs but no manifest is a broken export, not a checkpoint.
        looks_exported = path.is_dir() and ((path / "manifest.json").is_file() or any(path.glob("*.onnx")))
        if looks_exported or backend in ("tensorrt", "onnxruntime"):
            model, export_frames = load_export(path, backend, device, threads, checkpoint)
            fixed = {"dtype": str(model.dtype).replace("torch.", ""), "max_seq_len": model.max_seq_len}
            for name, value in (("dtype", dtype), ("max_seq_len", max_seq_len)):
                if value is not None and value != fixed[name]:
                    raise ValueError(f"{name}={value!r}, but the export folder {path} was built with {name} {fixed[name]}")
            if frames is not None:
                _check_count(frames)
                check_frame_count(frames, model.max_frames, f"the engines in {path}")
            model.vision_batch = vision_batch or _engine_vision_batch(path, model)
            return cls(model, decode_mode, default_frames=frames or export_frames, source=str(path),
                       decode_steps=decode_steps)
        model, default_frames = load_checkpoint(source, backend, device, dtype or "float32", max_seq_len)
        model.vision_batch = vision_batch
        return cls(model, decode_mode, default_frames=frames or default_frames, source=str(source),
                   decode_steps=decode_steps)

    # -- properties -------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._model.backend

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def frames(self) -> int | None:
        """None: every frame count works, 1..:attr:`max_frames` (kept for callers that asked
        for an export's fixed count; exports had one before manifest format 3)."""
        return None

    @property
    def max_frames(self) -> int | None:
        """The most frames per video the engines serve (None: any, torch backend)."""
        return self._model.max_frames

    @property
    def max_seq_len(self) -> int:
        return self._model.max_seq_len

    @property
    def tokenizer(self):
        return self._model.tokenizer

    @property
    def config(self):
        return self._model.config

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "device": str(self.device), "dtype": str(self._model.dtype).replace("torch.", ""),
            "frames": self.frames, "default_frames": self.default_frames, "max_frames": self.max_frames,
            "max_seq_len": self.max_seq_len,
            "decode_mode": self.decode_mode, "decode_steps": self._runner.decode_steps, "source": self.source,
        }

    # -- questions --------------------------------------------------------------------------

    def generate(self, video=None, question: str | None = None, *, frames: int | None = None,
                 system: str = DEFAULT_SYSTEM, decode_mode: str | None = None, **sampling) -> RuntimeResult:
        """Answer one question about ``video`` (path, uint8 (T, H, W, 3) array, ``VideoFrames``,
        or None for a text-only prompt). ``sampling``: ``SamplingParams`` fields."""
        params = self._check_question(question, sampling)
        with self.open_video(video, frames=frames, system=system, decode_mode=decode_mode) as session:
            return session._ask(question, params)

    def stream(self, video=None, question: str | None = None, *, frames: int | None = None,
               system: str = DEFAULT_SYSTEM, decode_mode: str | None = None, **sampling) -> TextStream:
        """Like :meth:`generate`, but iterate the result for text pieces; ``.result`` at the end."""
        params = self._check_question(question, sampling)
        session = self.open_video(video, frames=frames, system=system, decode_mode=decode_mode)
        try:
            return session._stream(question, params, on_done=session.close)
        except BaseException:
            session.close()
            raise

    def encode_video(self, video, *, frames: int | None = None, sampling: str = "uniform", fps: float | None = None,
                     start_s: float | None = None, end_s: float | None = None) -> VideoState:
        """Decode and encode a video once (fast tokens, slow K/V) for any number of sessions.

        ``video``: a path (decoded with :func:`slowfast_trt.video.load_video`, ``sampling``,
        ``fps``, ``start_s``, ``end_s`` as there, ``frames`` frames, default
        :attr:`default_frames`), or frames in memory (:mod:`slowfast_trt.frames`: a uint8
        (T, H, W, 3) array, a torch tensor on CPU or CUDA, a DLPack array, PIL images,
        ``VideoFrames``), 1..:attr:`max_frames` of them.
        """
        timings: dict[str, float] = {}
        array = self._frames_of(video, frames, timings, sampling=sampling, fps=fps, start_s=start_s, end_s=end_s)
        with torch.no_grad():
            return self._model.encode_frames(array, timings)

    def open_video(self, video=None, *, frames: int | None = None, system: str = DEFAULT_SYSTEM,
                   decode_mode: str | None = None, **video_options) -> VideoSession:
        """A conversation about ``video``: anything :meth:`encode_video` takes (encoded here,
        freed when the session closes), a ``VideoState`` it returned (shared, not freed), or
        None for a text-only chat."""
        mode = check_decode_mode(decode_mode or self.decode_mode)
        Conversation(system=system)  # validate before any work
        owned = not isinstance(video, VideoState)
        state = video
        if video is not None and owned:
            state = self.encode_video(video, frames=frames, **video_options)
        elif not owned and state.released:
            raise ValueError("this encoded video was released (its session closed); encode it again")
        kv = self._acquire_cache()
        return VideoSession(self._model, self._runner, state, kv, mode, system, on_close=self._return_cache,
                            owns_video=owned)

    def close(self) -> None:
        """Free the spare KV cache and the engines."""
        for kv in self._spare_caches:
            kv.release()
        self._spare_caches = []
        self._runner.close()
        for engine in self._model.engines.values():
            engine.close()

    def __enter__(self) -> "SlowFastRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _check_question(question, sampling):
        if question is None:
            raise ValueError("a question is required (question=...)")
        Conversation().add_question(question)
        return sampling_params(**sampling)

    def _frame_count(self, frames: int | None) -> int:
        if frames is not None:
            _check_count(frames)
        count = frames or min(self.default_frames, self._model.max_frames or self.default_frames)
        check_frame_count(count, self._model.max_frames, f"the engines in {self.source}")
        return count

    def _frames_of(self, video, frames: int | None, timings: dict, **video_kwargs):
        if is_frame_input(video):
            count = check_frames(video, self._model.max_frames)
            if frames is not None and count != frames:
                raise ValueError(f"frames={frames}, but the frame array holds {count} frames")
            return video
        if not isinstance(video, (str, os.PathLike)):
            raise ValueError("video must be a path, frames in memory (a uint8 (T, H, W, 3) array or tensor, a DLPack "
                             f"array, PIL images, VideoFrames) or None, got {type(video).__name__}")
        count = self._frame_count(frames)
        start = time.perf_counter()
        if is_image_path(video):
            clip = load_image(video)
        else:
            clip = load_video(video, count, **video_kwargs)
        timings["video_decode_ms"] = _ms(start)
        return clip.frames

    def _acquire_cache(self):
        from slowfast_trt.runtime.kv_cache import KVCache

        if self._spare_caches:
            kv = self._spare_caches.pop()
            kv.reset()
            return kv
        return KVCache(self._model.kv_spec())

    def _return_cache(self, kv) -> None:
        if kv.released:
            return
        if self._spare_caches:
            kv.release()  # keep one spare: a one-shot generate() allocates nothing after the first
        else:
            kv.reset()
            self._spare_caches.append(kv)

    def __repr__(self) -> str:
        return f"SlowFastRuntime({', '.join(f'{k}={v!r}' for k, v in self.info().items())})"


# -- loading ---------------------------------------------------------------------------------


def load_checkpoint(source, backend: str, device, dtype: str, max_seq_len: int | None) -> tuple[RuntimeModel, int]:
    """A checkpoint run eagerly by the torch engines; returns the model and its default frames."""
    from slowfast_trt.models.slowfast.checkpoint import load_model, resolve_checkpoint
    from slowfast_trt.runtime.torch_engine import torch_engines
    from slowfast_trt.tokenizer import load_tokenizer

    if backend not in ("auto", "torch"):
        raise ValueError(
            f"{source}: backend {backend!r} needs an export folder (manifest.json); create one with "
            f"python -m slowfast_trt.export --ckpt {source} --out DIR"
        )
    directory = resolve_checkpoint(source)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
    for name in _ENGINES + ("embed",):
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
    names = list(_ENGINES)
    subgraphs = manifest["subgraphs"]
    if "decoder_nocross" in subgraphs:
        names.append("decoder_nocross")
    if backend == "tensorrt":
        from slowfast_trt.runtime.trt_engine import TrtEngine, check_engine_folder, with_decode_context

        files = manifest["engines"]
        missing = [n for n in _ENGINES if n not in files]
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


def _check_count(frames) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")


def _engine_vision_batch(path: Path, model: RuntimeModel) -> int | None:
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
