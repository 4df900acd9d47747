"""The eager PyTorch LongVU generator: the semantics every backend reproduces token for token.

``generate`` = :class:`~slowfast_trt.models.longvu.pipeline.LongVUEncoder` (towers, selection,
connector, merge) -> prefill of the merged rows at positions 0..len-1 -> the shared decode loop
(greedy by default, stop at ``<|im_end|>``; each step at position len + i, quirk 18) with an
explicit KV cache. Nothing is kept between calls except what the caller passes back (a
:class:`VideoFeatures` can serve several questions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slowfast_trt.generation import DecodeOutcome, GenerationResult, apply_stop_strings, decode_loop
from slowfast_trt.models.longvu.checkpoint import load_model, resolve_folders
from slowfast_trt.models.longvu.model import LongVUModel
from slowfast_trt.models.longvu.pipeline import LongVUEncoder, PromptRows, Stages, VideoFeatures
from slowfast_trt.models.longvu.prompt import LongVUConversation, longvu_stop_ids
from slowfast_trt.prompt import tokenize_prompt
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.tokenizer import load_tokenizer

__all__ = ["LongVUReference", "LongVUResult", "torch_stages"]


@dataclass
class LongVUResult(GenerationResult):
    """:class:`GenerationResult` plus which sampled frames were kept and the resolution mode."""

    kept_frames: list[int] = field(default_factory=list)
    mode: str = ""
    frame_indices: list[int] | None = None  # video frame index of each sampled frame, when known

    def to_json(self) -> dict:
        out = super().to_json()
        out["kept_frames"] = list(self.kept_frames)
        if self.frame_indices is not None:
            out["kept_frame_indices"] = [int(self.frame_indices[i]) for i in self.kept_frames]
        out["mode"] = self.mode
        return out


def torch_stages(model: LongVUModel) -> Stages:
    """:class:`Stages` running the eager modules."""
    return Stages(
        dino=lambda px: model.dino_features(torch.from_numpy(px)),
        siglip=lambda px: model.siglip_features(torch.from_numpy(px)),
        connector=model.connect,
        embed=model.embed,
        newline=model.connector.image_newline.detach(),
    )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class LongVUReference:
    """Eager generation with upstream semantics; see the module docstring."""

    def __init__(self, model: LongVUModel, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = LongVUEncoder(model.config, torch_stages(model))
        self.stop_ids = longvu_stop_ids(tokenizer, model.config.text.eos_token_id)

    @classmethod
    def load(cls, ckpt: str | Path, dtype: str = "float32", device: str = "cpu", siglip=None, dino=None):
        folders = resolve_folders(ckpt, siglip, dino)
        tokenizer = load_tokenizer(folders.checkpoint)
        model = load_model(folders.checkpoint, dtype=dtype, vocab_rows=len(tokenizer), device=device,
                           siglip=folders.siglip, dino=folders.dino)
        return cls(model, tokenizer)

    def prompt_ids(self, question: str):
        conversation = LongVUConversation(has_video=True)
        conversation.add_question(question)
        return tokenize_prompt(self.tokenizer, conversation.prompt_text())

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray) -> VideoFeatures:
        return self.encoder.encode_video(frames)

    @torch.inference_mode()
    def prepare(self, video: VideoFeatures, question: str, timings: dict | None = None) -> PromptRows:
        return self.encoder.prompt_rows(video, self.prompt_ids(question), timings)

    @torch.inference_mode()
    def forward_rows(self, embeds: torch.Tensor, start: int = 0, cache=None, all_logits: bool = False):
        """Run ``embeds`` (L, H) at positions start.. over ``cache`` -> (logits, new cache)."""
        model = self.model
        cache = cache or model.decoder.empty_cache()
        positions = torch.arange(start, start + embeds.shape[0], device=model.device)[None]
        logits, new_k, new_v = model.decoder(embeds[None].to(model.dtype), positions, cache[0], cache[1],
                                             all_logits=all_logits)
        keys = [torch.cat((old, new), dim=1) for old, new in zip(cache[0], new_k)]
        values = [torch.cat((old, new), dim=1) for old, new in zip(cache[1], new_v)]
        return logits[0], (keys, values)

    @torch.inference_mode()
    def generate(self, video: VideoFeatures | np.ndarray, question: str,
                 sampling: SamplingParams | None = None) -> LongVUResult:
        sampling = sampling or SamplingParams()
        if isinstance(video, np.ndarray):
            video = self.encode_video(video)
        timings = dict(video.timings_ms)
        rows = self.prepare(video, question, timings)
        start = time.perf_counter()
        logits, cache = self.forward_rows(rows.embeds)
        timings["prefill_ms"] = _ms(start)
        state = {"cache": cache, "length": rows.length}

        def step(token: int) -> torch.Tensor:
            step_logits, state["cache"] = self.forward_rows(self.model.embed([token]), state["length"], state["cache"])
            state["length"] += 1
            return step_logits

        outcome = DecodeOutcome()
        stops = set(self.stop_ids) | set(sampling.stop_token_ids)
        for _ in decode_loop(logits, step, sampling, stops, self.tokenizer, timings, outcome):
            pass
        text = self.tokenizer.decode(outcome.ids, skip_special_tokens=True)
        text, reason = apply_stop_strings(text, outcome.reason, sampling.stop_strings)
        return LongVUResult(
            text=text, token_ids=outcome.ids, finish_reason=reason, frames=video.frames, slow_tokens=0,
            fast_tokens=rows.visual_tokens, prompt_tokens=rows.length, timings_ms=timings,
            kept_frames=list(rows.kept), mode=rows.mode,
        )
