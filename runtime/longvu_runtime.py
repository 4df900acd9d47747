"""``LongVURuntime``: LongVU (``family`` ``longvu``) run by ONNX Runtime or PyTorch.

``SlowFastRuntime.load(source)`` hands a LongVU export folder (``manifest.json`` ``"family":
"longvu"``) or checkpoint (``model_type`` ``cambrian_qwen``) to :meth:`LongVURuntime.load`; the
same surface follows (``generate``, ``stream``, ``open_video`` sessions, ``info``, ``close``), so
the CLIs, the benchmark and the server drive both families alike.

Engines (:mod:`slowfast_trt.models.longvu.specs`): ``dino``, ``siglip``, ``connector``,
``decoder``. The host work between them (selection, mode, unpad + newlines, upgrade, drop,
splice) is the model package's :class:`~slowfast_trt.models.longvu.pipeline.LongVUEncoder`, the
same code the eager reference runs. The decoder is driven by the shared
:class:`~slowfast_trt.runtime.decoder_runner.DecoderRunner` and KV cache (a plain Qwen2 decoder
is a decoder with no hybrid layer: :class:`_DecoderView`), so KV cache, static / CUDA-graph
decode steps and sampling are the Slow-Fast ones. A file is sampled as the model card does (one
frame per second, :func:`slowfast_trt.models.longvu.sampling.sample_video`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slowfast_trt.models.longvu.family import LONGVU
from slowfast_trt.models.longvu.pipeline import VideoFeatures
from slowfast_trt.models.longvu.specs import CHUNK
from slowfast_trt.prompt import DEFAULT_SYSTEM
from slowfast_trt.runtime import longvu_loading as loading
from slowfast_trt.runtime.decoder_runner import DecoderRunner
from slowfast_trt.runtime.kv_cache import KVCache
from slowfast_trt.runtime.longvu_model import LongVURuntimeModel
from slowfast_trt.runtime.longvu_session import LongVUSession, sampling_params

__all__ = ["LongVURuntime"]


def _pick_device(backend: str, device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() and backend == "torch" else "cpu")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device}")
    return device


class LongVURuntime:
    """A loaded LongVU model (see the module docstring). One generation at a time."""

    family = LONGVU

    def __init__(self, model: LongVURuntimeModel, source: str = "", decode_steps: str = "auto"):
        self._model = model
        self._runner = DecoderRunner(model.decoder_view(), decode_steps)
        self.source = source
        self.decode_mode = "upstream"
        self._spare: list[KVCache] = []

    @classmethod
    def load(cls, source: str | os.PathLike, backend: str = "auto", device=None, *, decode_mode: str = "upstream",
             dtype: str | None = None, frames: int | None = None, max_seq_len: int | None = None,
             threads: int | None = None, checkpoint=None, vision_batch: int | None = None, decode_steps: str = "auto",
             siglip=None, dino=None) -> "LongVURuntime":
        """An export folder (ONNX Runtime) or a checkpoint (PyTorch; towers from the Hugging Face
        cache, or ``siglip=`` / ``dino=`` folders). Options that do not apply to LongVU (``frames``:
        it samples one frame per second; ``decode_mode='attend'``: it has no cross-attention) are
        a ``ValueError``."""
        if frames is not None:
            raise ValueError(f"frames={frames}: LongVU samples one frame per second of video (upstream's rule), "
                             "there is no frame count to choose")
        if decode_mode not in ("upstream", None):
            raise ValueError(f"decode_mode={decode_mode!r}: LongVU has no cross-attention; only 'upstream' applies")
        if vision_batch is not None and not (isinstance(vision_batch, int) and 1 <= vision_batch <= CHUNK):
            raise ValueError(f"vision_batch must be an integer in 1..{CHUNK}, got {vision_batch!r}")
        path = Path(source)
        if (path / "manifest.json").is_file() or backend in ("onnxruntime", "tensorrt"):
            model = loading.load_export(path, backend, device, threads, checkpoint, dtype, max_seq_len)
        else:
            model = loading.load_checkpoint(source, backend, _pick_device("torch", device), dtype or "float32",
                                            max_seq_len, siglip, dino)
        model.vision_batch = vision_batch or CHUNK
        return cls(model, str(source), decode_steps)

    # -- properties ---------------------------------------------------------------------------

    backend = property(lambda self: self._model.backend)
    device = property(lambda self: self._model.device)
    max_seq_len = property(lambda self: self._model.max_seq_len)
    tokenizer = property(lambda self: self._model.tokenizer)
    config = property(lambda self: self._model.config)
    frames = property(lambda self: None)
    max_frames = property(lambda self: None)
    default_frames = property(lambda self: None)

    def info(self) -> dict[str, Any]:
        return {"family": self.family.name, "backend": self.backend, "device": str(self.device),
                "dtype": str(self._model.dtype).replace("torch.", ""), "frames": None, "default_frames": None,
                "max_frames": None, "sampling": "one frame per round(fps) frames", "max_seq_len": self.max_seq_len,
                "decode_mode": self.decode_mode, "decode_steps": self._runner.decode_steps, "source": self.source}

    # -- videos and questions -------------------------------------------------------------------

    def encode_video(self, video, *, frames: int | None = None, sampling: str = "uniform", fps=None, start_s=None,
                     end_s=None) -> VideoFeatures:
        """A path (sampled one frame per second) or uint8 frames in memory -> what sessions cache."""
        from slowfast_trt.frames import as_frames, is_frame_input

        if frames is not None or sampling not in ("uniform", None) or fps is not None or start_s is not None \
                or end_s is not None:
            raise ValueError("LongVU samples one frame per second of the whole video (every round(fps)-th frame, "
                             "upstream's rule); frames, sampling, fps, start and end do not apply")
        timings, indices = {}, None
        if is_frame_input(video):
            array = as_frames(video)
            array = array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        elif isinstance(video, (str, os.PathLike)):
            start = time.perf_counter()
            clip = self.family.sample_video(video)
            timings["video_decode_ms"] = (time.perf_counter() - start) * 1e3
            array, indices = clip.frames, clip.indices.tolist()
        else:
            raise ValueError(f"video must be a path or uint8 (T, H, W, 3) frames, got {type(video).__name__}")
        with torch.no_grad():
            features = self._model.encoder().encode_video(array)
        features.timings_ms = {**timings, **features.timings_ms}
        features.frame_indices = indices
        return features

    def open_video(self, video=None, *, frames: int | None = None, system: str = DEFAULT_SYSTEM,
                   decode_mode: str | None = None, **video_options) -> LongVUSession:
        if decode_mode not in (None, "upstream"):
            raise ValueError(f"decode_mode={decode_mode!r}: LongVU has no cross-attention; only 'upstream' applies")
        self.family.conversation(system=system)  # validate before any work
        owned = not isinstance(video, VideoFeatures)
        state = self.encode_video(video, frames=frames, **video_options) if (video is not None and owned) else video
        if state is not None and state.released:
            raise ValueError("this encoded video was released (its session closed); encode it again")
        kv = self._spare.pop() if self._spare else KVCache(self._model.kv_spec())
        kv.reset()
        return LongVUSession(self._model, self._runner, state, kv, system, on_close=self._give_back, owns_video=owned)

    def generate(self, video=None, question: str | None = None, *, system: str = DEFAULT_SYSTEM, **sampling):
        params = self._check_question(question, sampling)
        with self.open_video(video, system=system) as session:
            return session._ask(question, params)

    def stream(self, video=None, question: str | None = None, *, system: str = DEFAULT_SYSTEM, **sampling):
        params = self._check_question(question, sampling)
        session = self.open_video(video, system=system)
        try:
            return session._stream(question, params, on_done=session.close)
        except BaseException:
            session.close()
            raise

    def _check_question(self, question, sampling):
        if question is None:
            raise ValueError("a question is required (question=...)")
        self.family.conversation().add_question(question)
        return sampling_params(**sampling)

    def _give_back(self, kv: KVCache) -> None:
        if kv.released:
            return
        if self._spare:
            kv.release()
        else:
            kv.reset()
            self._spare.append(kv)

    def close(self) -> None:
        for kv in self._spare:
            kv.release()
        self._spare = []
        self._runner.close()
        for engine in self._model.engines.values():
            engine.close()

    def __enter__(self) -> "LongVURuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LongVURuntime({', '.join(f'{k}={v!r}' for k, v in self.info().items())})"
