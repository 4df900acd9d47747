"""The PyTorch reference generator: the semantics every backend must reproduce token for token.

It runs the whole pipeline eagerly (decode and sample frames, preprocess, vision tower,
projector and pooling, slow K/V once per video, prefill, then one decode step per token with
an explicit KV cache). It keeps no state between calls: a prompt after a previous video, or a
text-only prompt, simply starts from scratch (upstream crashes on the latter and reuses stale
state on the former).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slowfast_trt.models.slowfast.checkpoint import load_model, resolve_checkpoint
from slowfast_trt.models.slowfast.model import SlowFastModel, SlowKV, VisualTokens
from slowfast_trt.preprocess import preprocess_frames
from slowfast_trt.prompt import Conversation, PromptTokens, stop_token_ids, tokenize_prompt
from slowfast_trt.generation import DecodeOutcome, GenerationResult, apply_stop_strings, decode_loop
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.tokenizer import load_tokenizer
from slowfast_trt.models.slowfast.sequence import (
    SequenceLayout,
    attend_to_rows,
    continuation_attend_mask,
    decode_rows_attend,
    merge_embeddings,
    prefill_attend_mask,
)
from slowfast_trt.video import VideoFrames, load_video


@dataclass(frozen=True)
class EncodedVideo:
    """A video ready for any number of questions: fast tokens and the cached slow K/V."""

    visual: VisualTokens
    slow_kv: SlowKV
    timings_ms: dict[str, float]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class ReferenceGenerator:
    """Eager PyTorch generation with upstream semantics; see the module docstring."""

    def __init__(self, model: SlowFastModel, tokenizer, decode_mode: str = "upstream"):
        self.model = model
        self.tokenizer = tokenizer
        self.decode_mode = decode_mode
        self.rows_attend_in_decode = decode_rows_attend(decode_mode)
        self.stop_ids = stop_token_ids(tokenizer)

    @classmethod
    def load(cls, ckpt: str | Path, dtype: str = "float32", decode_mode: str = "upstream", device: str = "cpu"):
        directory = resolve_checkpoint(ckpt)
        tokenizer = load_tokenizer(directory)
        # Upstream resizes the embedding and LM head to len(tokenizer) at load.
        model = load_model(directory, dtype=dtype, vocab_rows=len(tokenizer), device=device)
        return cls(model, tokenizer, decode_mode)

    @torch.inference_mode()
    def encode_video(self, frames: VideoFrames | np.ndarray) -> EncodedVideo:
        """Preprocess, run the vision tower, pool, split and compute the slow K/V once."""
        array = frames.frames if isinstance(frames, VideoFrames) else frames
        timings = {}
        start = time.perf_counter()
        pixels = torch.from_numpy(preprocess_frames(array)).to(self.model.device)
        timings["preprocess_ms"] = _ms(start)
        start = time.perf_counter()
        visual = self.model.encode_video(pixels)
        timings["vision_ms"] = _ms(start)
        start = time.perf_counter()
        slow_kv = self.model.compute_slow_kv(visual.slow)
        timings["slow_kv_ms"] = _ms(start)
        return EncodedVideo(visual, slow_kv, timings)

    def load_and_encode(self, path: str | Path, num_frames: int, **sampling_kwargs) -> EncodedVideo:
        start = time.perf_counter()
        frames = load_video(path, num_frames, **sampling_kwargs)
        decode_ms = _ms(start)
        encoded = self.encode_video(frames)
        encoded.timings_ms["decode_ms"] = decode_ms
        return encoded

    def prompt_for(self, conversation: Conversation) -> PromptTokens:
        return tokenize_prompt(self.tokenizer, conversation.prompt_text())

    @torch.inference_mode()
    def generate(
        self,
        question: str | None = None,
        video: EncodedVideo | None = None,
        sampling: SamplingParams | None = None,
        conversation: Conversation | None = None,
    ) -> GenerationResult:
        """Answer ``question`` (or the last question of ``conversation``) about ``video``."""
        sampling = sampling or SamplingParams()
        if conversation is None:
            if question is None:
                raise ValueError("generate needs a question or a conversation")
            conversation = Conversation(has_video=video is not None)
            conversation.add_question(question)
        if conversation.has_video != (video is not None):
            raise ValueError("the conversation and the video argument disagree on whether there is a video")
        prompt = self.prompt_for(conversation)
        num_fast = int(video.visual.fast.shape[0]) if video is not None else 0
        layout = SequenceLayout.of(prompt, num_fast)
        limit = self.model.config.text.max_position_embeddings
        if layout.length + sampling.max_new_tokens > limit:
            raise ValueError(
                f"prompt of {layout.length} rows + max_new_tokens {sampling.max_new_tokens} exceeds the "
                f"model's {limit} positions"
            )
        timings = dict(video.timings_ms) if video is not None else {}
        start = time.perf_counter()
        logits, cache = self._prefill(prompt, layout, video)
        timings["prefill_ms"] = _ms(start)
        ids, reason = self._decode(logits, cache, layout.length, video, sampling, timings)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, reason = apply_stop_strings(text, reason, sampling.stop_strings)
        return GenerationResult(
            text=text,
            token_ids=ids,
            finish_reason=reason,
            frames=video.visual.frames if video is not None else 0,
            slow_tokens=video.slow_kv.num_tokens if video is not None else 0,
            fast_tokens=num_fast,
            prompt_tokens=layout.length,
            timings_ms=timings,
        )

    def _prefill(self, prompt: PromptTokens, layout: SequenceLayout, video: EncodedVideo | None):
        model = self.model
        embeds = merge_embeddings(model.embed_tokens, prompt, video.visual.fast if video else None)[None]
        positions = torch.arange(layout.length, device=model.device)[None]
        attend = prefill_attend_mask(layout, model.config.cross_attn, video is not None)
        return self._step(embeds, positions, model.empty_cache(), video, attend)

    def _step(self, embeds, positions, cache, video: EncodedVideo | None, attend: torch.Tensor):
        rows, offsets = attend_to_rows(attend)
        slow = video.slow_kv if video is not None else None
        logits, new_k, new_v = self.model.decoder(
            embeds,
            positions,
            cache[0],
            cache[1],
            slow_keys=list(slow.keys) if slow else None,
            slow_values=list(slow.values) if slow else None,
            slow_lengths=slow.lengths if slow else None,
            cross_rows=rows.to(embeds.device),
            cross_row_offsets=offsets.to(embeds.device),
        )
        keys = [torch.cat((old, new), dim=1) for old, new in zip(cache[0], new_k)]
        values = [torch.cat((old, new), dim=1) for old, new in zip(cache[1], new_v)]
        return logits[0], (keys, values)

    def _decode(self, logits, cache, length, video, sampling: SamplingParams, timings):
        state = {"cache": cache, "length": length}

        def step(token: int) -> torch.Tensor:
            embeds = self.model.embed_tokens(torch.tensor([[token]], device=self.model.device))
            positions = torch.tensor([[state["length"]]], device=self.model.device)
            attend = continuation_attend_mask(1, video is not None, self.rows_attend_in_decode)
            step_logits, state["cache"] = self._step(embeds, positions, state["cache"], video, attend)
            state["length"] += 1
            return step_logits

        outcome = DecodeOutcome()
        stops = set(self.stop_ids) | set(sampling.stop_token_ids)
        for _ in decode_loop(logits, step, sampling, stops, self.tokenizer, timings, outcome):
            pass
        return outcome.ids, outcome.reason
