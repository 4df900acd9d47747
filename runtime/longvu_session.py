"""LongVU sessions: one video's cached features, one conversation's KV cache, generation.

What is reused for a follow-up question
---------------------------------------
A LongVU prompt's visual rows depend on the question: the token budget depends on the prompt's
length (``L - n - 16``), and in mix mode the frames upgraded to high resolution are the ones most
similar to the text after the placeholder (the whole conversation so far). So every question
re-runs, on the host, DINO frame selection, the mode decision, unpadding, the upgrade and the
spatial drop, from what the session keeps per video (:class:`VideoFeatures`): the DINOv2 features
of every sampled frame (computed once) and the SigLIP + connector tokens of every frame some
question kept (SigLIP and the connector run only for kept frames not seen before). The DINOv2
tower, by far the most expensive stage, never runs twice for one video.

The prompt is the whole conversation (the previous answers re-tokenized from their text, as a
from-scratch prefill would see them), and the KV cache is reused exactly where its rows are
equal: the cached rows are compared with the new prompt's input rows (their embeddings, bit for
bit), and only rows after the first difference are prefilled again. The system prompt before the
video is always reused; the video rows and everything after them are reused when selection and
merge give the same rows (e.g. every frame high-resolution and under budget) and re-prefilled
otherwise. Positions are the same (0 ..), so an equal prefix has equal K/V.
"""

from __future__ import annotations

import time
import warnings
from typing import Iterator

import torch

from slowfast_trt.detokenize import TextStream
from slowfast_trt.generation import DecodeOutcome, apply_stop_strings, decode_loop
from slowfast_trt.models.longvu.family import LONGVU
from slowfast_trt.models.longvu.pipeline import VideoFeatures
from slowfast_trt.models.longvu.reference import LongVUResult
from slowfast_trt.prompt import ChatTurn, tokenize_prompt
from slowfast_trt.sampling import SamplingParams, sampling_params

__all__ = ["LongVURuntimeResult", "LongVUSession", "sampling_params"]


class LongVURuntimeResult(LongVUResult):
    """:class:`LongVUResult` plus what the session reused (the keys of Slow-Fast's ``RuntimeResult``)."""

    def __init__(self, *, prefill_rows: int, reused_rows: int, backend: str, history_note: str | None, **fields):
        super().__init__(**fields)
        self.prefill_rows, self.reused_rows, self.backend, self.history_note = prefill_rows, reused_rows, backend, \
            history_note

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(prefill_rows=self.prefill_rows, reused_rows=self.reused_rows, backend=self.backend,
                   history_note=self.history_note)
        return out


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _equal_prefix(old: torch.Tensor, new: torch.Tensor) -> int:
    n = min(old.shape[0], new.shape[0])
    if n == 0:
        return 0
    differs = (old[:n] != new[:n]).any(dim=-1).nonzero()
    return int(differs[0]) if differs.numel() else n


class LongVUSession:
    """A conversation about one video (or a text-only chat). See the module docstring."""

    def __init__(self, model, runner, video: VideoFeatures | None, kv, system: str, on_close=None,
                 owns_video: bool = True):
        self._model, self._runner, self._video, self._kv = model, runner, video, kv
        self._owns_video, self._on_close = owns_video, on_close
        self._conversation = LONGVU.conversation(system=system, has_video=video is not None)
        # Input rows of the cached K/V (what a follow-up compares with), preallocated like the cache.
        self._rows = torch.zeros((kv.max_len, model.config.text.hidden_size), dtype=model.dtype, device=model.device)
        self._rows_len = 0
        self._stop_ids = set(LONGVU.stop_ids(model.tokenizer, model.config))
        self._video_timings_pending = True
        self._serial = 0
        self.last_result: LongVURuntimeResult | None = None

    @property
    def video(self) -> VideoFeatures | None:
        return self._video

    @property
    def conversation(self):
        """A copy of the conversation so far (a ``LongVUConversation``)."""
        conv = self._conversation
        return LONGVU.conversation(system=conv.system, has_video=conv.has_video, turns=conv.turns)

    def set_history(self, turns) -> None:
        """Start from earlier (question, answer) turns (e.g. a chat request's history); the next
        question is asked after them. ``ValueError`` for a reserved string in a turn."""
        self._check_open()
        conv = LONGVU.conversation(system=self._conversation.system, has_video=self._video is not None,
                                   turns=[ChatTurn(q, a) for q, a in turns])
        self._conversation = conv

    @property
    def cached_rows(self) -> int:
        return 0 if self._kv is None else self._kv.length

    def ask(self, question: str, **sampling) -> LongVURuntimeResult:
        return self._ask(question, sampling_params(**sampling))

    def _ask(self, question: str, params: SamplingParams) -> LongVURuntimeResult:
        with self._model.lock:
            turn = self._begin(question, params)
            for _ in self._decode(turn):
                pass
            return self.last_result

    def stream(self, question: str, **sampling) -> TextStream:
        return self._stream(question, sampling_params(**sampling))

    def _stream(self, question: str, params: SamplingParams, on_done=None) -> TextStream:
        with self._model.lock:
            turn = self._begin(question, params)
        return TextStream(self._model.tokenizer, self._decode(turn), params.stop_strings,
                          result=lambda: self.last_result, on_done=on_done)

    def reset(self) -> None:
        """Forget the conversation, keep the video (and the cached rows, reused where equal)."""
        self._check_open()
        self._conversation = LONGVU.conversation(system=self._conversation.system,
                                                 has_video=self._video is not None)

    def close(self) -> None:
        with self._model.lock:
            if self._kv is None:
                return
            kv, self._kv = self._kv, None
            if self._video is not None and self._owns_video:
                self._video.release()
            self._video = None
            self._rows, self._rows_len = self._rows[:0], 0
            (self._on_close or (lambda k: k.release()))(kv)
            self._runner.forget_released()

    def __enter__(self) -> "LongVUSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one question ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._kv is None:
            raise ValueError("this video session is closed; open a new one with open_video")

    def _prompt_rows(self, conversation, timings):
        prompt = tokenize_prompt(self._model.tokenizer, conversation.prompt_text())
        if self._video is None:
            return self._model.embed_ids(prompt.ids), None
        with torch.no_grad():
            rows = self._model.encoder().prompt_rows(self._video, prompt, timings)
        return rows.embeds.to(self._model.device, self._model.dtype), rows

    def _begin(self, question: str, params: SamplingParams) -> dict:
        """Validate, build the prompt rows, keep the equal cached prefix, prefill the rest."""
        self._check_open()
        conversation = LONGVU.conversation(system=self._conversation.system, has_video=self._video is not None,
                                           turns=self._conversation.turns)
        conversation.add_question(question)
        timings = self._video_timings()
        embeds, rows = self._prompt_rows(conversation, timings)
        length = int(embeds.shape[0])
        if length + params.max_new_tokens > self._kv.max_len:
            raise ValueError(f"prompt of {length} rows + max_new_tokens {params.max_new_tokens} exceeds the maximum "
                             f"sequence length {self._kv.max_len}")
        keep = min(_equal_prefix(self._rows[:self._rows_len], embeds), length - 1)  # at least one row gives the next logits
        self._serial += 1
        self._kv.rollback(keep)
        device = self._model.device
        positions = torch.arange(keep, length, dtype=torch.int64, device=device)[None]
        no_row_attends = torch.zeros(length - keep, dtype=torch.bool)  # a plain decoder: no cross-attention
        start = time.perf_counter()
        logits = self._runner.prefill(self._kv, None, embeds[keep:][None], positions, no_row_attends)
        self._runner.synchronize()
        timings["prefill_ms"] = _ms(start)
        self._rows[:length].copy_(embeds)
        self._rows_len = length
        return {"conversation": conversation, "params": params, "timings": timings, "rows": rows, "length": length,
                "keep": keep, "first": logits.clone(), "ids": [], "serial": self._serial}

    def _video_timings(self) -> dict[str, float]:
        if self._video is None or not self._video_timings_pending:
            return {}
        self._video_timings_pending = False
        return dict(self._video.timings_ms)

    def _decode(self, turn: dict) -> Iterator[int]:
        state = {"length": turn["length"]}

        def step(token: int) -> torch.Tensor:
            if turn["serial"] != self._serial:
                raise ValueError("this answer was interrupted: another question was asked in the same session")
            logits = self._runner.decode_step(self._kv, None, token, state["length"], False)
            self._rows[self._rows_len] = self._model.embed_ids([token])[0]
            self._rows_len += 1
            state["length"] += 1
            return logits

        outcome = DecodeOutcome(ids=turn["ids"])
        stops = self._stop_ids | set(turn["params"].stop_token_ids)
        yield from decode_loop(turn["first"], step, turn["params"], stops, self._model.tokenizer, turn["timings"],
                               outcome, synchronize=self._runner.synchronize)
        self._finish(turn, outcome.reason)

    def _finish(self, turn: dict, reason: str) -> None:
        text = self._model.tokenizer.decode(turn["ids"], skip_special_tokens=True)
        text, reason = apply_stop_strings(text, reason, turn["params"].stop_strings)
        conversation, note = turn["conversation"], None
        try:
            conversation.set_answer(text)
        except ValueError as exc:  # a reserved string in the answer: the turn stays out of the history
            note = f"this turn is not kept in the session history: {exc}"
            warnings.warn(note, RuntimeWarning, stacklevel=2)
            conversation = LONGVU.conversation(system=conversation.system, has_video=conversation.has_video,
                                               turns=[ChatTurn(t.question, t.answer) for t in conversation.turns[:-1]])
        self._conversation = conversation
        rows, video = turn["rows"], self._video
        self.last_result = LongVURuntimeResult(
            text=text, token_ids=list(turn["ids"]), finish_reason=reason, frames=video.frames if video else 0,
            slow_tokens=0, fast_tokens=rows.visual_tokens if rows else 0, prompt_tokens=turn["length"],
            timings_ms=turn["timings"], kept_frames=list(rows.kept) if rows else [], mode=rows.mode if rows else "",
            frame_indices=video.frame_indices if video else None, prefill_rows=turn["length"] - turn["keep"],
            reused_rows=turn["keep"], backend=self._model.backend, history_note=note)
