"""Video sessions: one encoded video, the KV cache of one conversation about it, and generation.

A session keeps what a follow-up question can reuse: the fast tokens, the slow K/V of every
hybrid layer (computed once per video, read by every prefill and, in ``attend`` mode, every
decode step), and the KV cache of the conversation so far.

How a follow-up equals asking with the whole history from scratch
-----------------------------------------------------------------
The reference answers a follow-up by tokenizing the whole conversation text (the previous
answer included) and prefilling it. The session computes the same prompt ids, then finds
how many leading rows of its KV cache hold exactly what that prefill would compute, and
prefills only the rest. A cached row qualifies when its id matches (the previous answer is
re-tokenized from its text, which may differ from the sampled ids, e.g. a stop string cut
it or the ``"\\n\\n"`` merge at the assistant header, see ``followup_text``) and when it
was computed as a prompt row is: prompt rows always; generated rows only in ``attend``
decode mode, where they cross-attended like the prompt's text rows do. In ``upstream``
mode generated rows did not cross-attend, so the cache rolls back to the end of the
previous prompt and the answer is prefilled again as attending text rows (its tokens
only). No vision work and no re-prefill of the video happen in either mode.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch

from slowfast_trt.prompt import (
    DEFAULT_SYSTEM,
    VIDEO_TOKEN_ID,
    ChatTurn,
    Conversation,
    stop_token_ids,
    tokenize_prompt,
)
from slowfast_trt.generation import DecodeOutcome, GenerationResult, apply_stop_strings, decode_loop
from slowfast_trt.sampling import SamplingParams, sampling_params
from slowfast_trt.models.slowfast.sequence import (
    SequenceLayout,
    decode_rows_attend,
    prefill_attend_mask,
)
from slowfast_trt.detokenize import TextStream
from slowfast_trt.runtime.decoder_runner import DecoderRunner
from slowfast_trt.runtime.encoder import RuntimeModel, VideoState, check_frames
from slowfast_trt.runtime.kv_cache import KVCache
from slowfast_trt.runtime.serialize import ClosedError, locked_steps

__all__ = [
    "RuntimeModel",
    "RuntimeResult",
    "VideoSession",
    "VideoState",
    "check_frames",
    "common_prefix",
    "row_ids",
    "sampling_params",
]


@dataclass
class RuntimeResult(GenerationResult):
    """A :class:`GenerationResult` plus what the session reused: rows prefilled and rows kept."""

    prefill_rows: int = 0
    reused_rows: int = 0
    backend: str = ""
    # None, or why this answer is not in the session's history (follow-ups will not see it).
    history_note: str | None = None
    # A live stream's answer: the window it is about (frames held, first and last frame, ...).
    stream: dict | None = None

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(prefill_rows=self.prefill_rows, reused_rows=self.reused_rows, backend=self.backend,
                   history_note=self.history_note)
        if self.stream is not None:
            out["stream"] = self.stream
        return out


def row_ids(ids: tuple[int, ...], video_index: int | None, num_fast: int) -> list[int]:
    """Prompt ids with the video placeholder expanded to one ``VIDEO_TOKEN_ID`` per fast row."""
    if video_index is None:
        return list(ids)
    return list(ids[:video_index]) + [VIDEO_TOKEN_ID] * num_fast + list(ids[video_index + 1 :])


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


@dataclass
class _Turn:
    """One question in flight: its conversation, prompt and the state of decoding."""

    conversation: Conversation
    layout: SequenceLayout
    params: SamplingParams
    timings: dict[str, float]
    prefill_rows: int
    reused_rows: int
    ids: list[int] = field(default_factory=list)
    reason: str = "length"
    first_logits: torch.Tensor | None = None
    serial: int = 0  # which question of its session this is (a later one takes the session over)


class VideoSession:
    """A conversation about one video (or a text-only chat when ``video`` is None).

    Obtain one from ``SlowFastRuntime.open_video``; ask with :meth:`ask` or :meth:`stream`;
    :meth:`close` frees the video and the KV cache (or use it as a context manager). Threads:
    every call holds the runtime's lock (:mod:`slowfast_trt.runtime.serialize`); one question
    at a time per session (a new one ends an unfinished stream of the previous one).
    """

    def __init__(self, model: RuntimeModel, runner: DecoderRunner, video: VideoState | None, kv: KVCache,
                 decode_mode: str = "upstream", system: str = DEFAULT_SYSTEM, on_close=None, owns_video: bool = True):
        self._model = model
        self._runner = runner
        self._video = video
        self._kv = kv
        self.decode_mode = decode_mode
        self._rows_attend = decode_rows_attend(decode_mode)
        self._conversation = Conversation(system=system, has_video=video is not None)
        self._rows: list[int] = []  # ids of the cached rows that equal a from-scratch prefill
        self._on_close = on_close
        self._owns_video = owns_video
        self._stop_ids = set(stop_token_ids(model.tokenizer))
        self._video_timings_pending = True
        self._serial = 0  # questions begun (the cache holds the rows of the latest)
        # Benchmark switches: recompute the slow K/V before every decode step (upstream's cost),
        # and generate exactly max_new_tokens whatever the model samples.
        self.recompute_slow_kv_per_step = False
        self.ignore_stop_tokens = False
        self.last_result: RuntimeResult | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._kv is None

    @property
    def conversation(self) -> Conversation:
        """A copy of the conversation so far."""
        self._check_open()
        return self._copy_conversation()

    @property
    def video(self) -> VideoState | None:
        return self._video

    @property
    def cached_rows(self) -> int:
        return 0 if self._kv is None else self._kv.length

    def ask(self, question: str, **sampling) -> RuntimeResult:
        """Answer ``question`` given the conversation so far; the answer joins the history.

        ``sampling``: fields of :class:`slowfast_trt.sampling.SamplingParams`
        (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``,
        ``stop_token_ids``, ``stop_strings``, ``seed``).
        """
        return self._ask(question, sampling_params(**sampling))

    def _ask(self, question: str, params: SamplingParams) -> RuntimeResult:
        with self._model.lock:  # the whole answer: another thread's call waits for it
            turn = self._begin(question, params)
            for _ in self._decode(turn):
                pass
            return self.last_result

    def stream(self, question: str, **sampling) -> TextStream:
        """Like :meth:`ask`, but iterate the returned stream for text pieces as they decode.

        The prompt is checked and prefilled before this returns; ``stream.result`` holds the
        full result once the iteration is over. An abandoned stream leaves the history as it was.
        """
        return self._stream(question, sampling_params(**sampling))

    def _stream(self, question: str, params: SamplingParams, on_done=None) -> TextStream:
        with self._model.lock:
            turn = self._begin(question, params)
        # The lock is held for each decode step only: other calls run between the pieces.
        tokens = locked_steps(self._model.lock, self._decode(turn), lambda: self._check_turn(turn))
        return TextStream(self._model.tokenizer, tokens, params.stop_strings,
                          result=lambda: self.last_result, on_done=on_done)

    def reset(self) -> None:
        """Forget the conversation but keep the video; the cached system and video rows stay reusable."""
        self._check_open()
        self._conversation = Conversation(system=self._conversation.system, has_video=self._video is not None)

    def _replace_video(self, video: VideoState) -> None:
        """Ask about ``video`` from now on (a stream's window changed). The conversation is kept;
        no cached row is (every row may cross-attend to the old video), so the next question
        prefills from the start. The old video is released when this session owned it."""
        self._check_open()
        old, self._video = self._video, video
        if old is not None and old is not video and self._owns_video:
            old.release()
        self._rows = []
        self._kv.rollback(0)
        self._video_timings_pending = True
        self._runner.forget_released()

    def close(self) -> None:
        """Free the encoded video (if this session encoded it) and give the KV cache back; idempotent."""
        with self._model.lock:  # not while another thread runs a step on the shared runner
            self._close()

    def _close(self) -> None:
        if self._kv is None:
            return
        kv, self._kv = self._kv, None
        if self._video is not None:
            if self._owns_video:
                self._video.release()
            self._video = None
        self._rows = []
        if self._on_close is not None:
            self._on_close(kv)
        else:
            kv.release()
        self._runner.forget_released()  # static decode steps bound to what was just released

    def __enter__(self) -> "VideoSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- prefill ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._kv is None:
            raise ClosedError("this video session is closed (or its runtime is); open a new one with "
                              "SlowFastRuntime.open_video")

    def _check_turn(self, turn: _Turn) -> None:
        self._check_open()
        if turn.serial != self._serial:
            raise ValueError("this answer was interrupted: another question was asked in the same session before it "
                             "finished (one question at a time per session)")

    def _copy_conversation(self) -> Conversation:
        conv = self._conversation
        return Conversation(system=conv.system, has_video=conv.has_video, turns=conv.turns)

    def _begin(self, question: str, params: SamplingParams) -> _Turn:
        """Validate, build the prompt, roll the cache back to its reusable prefix and prefill the rest.

        Every check happens before the cache is touched, so an error leaves the session as it was.
        """
        self._check_open()
        conversation = self._copy_conversation()
        conversation.add_question(question)
        prompt = tokenize_prompt(self._model.tokenizer, conversation.prompt_text())
        num_fast = self._video.num_fast if self._video is not None else 0
        layout = SequenceLayout.of(prompt, num_fast)
        limit = self._kv.max_len
        if layout.length + params.max_new_tokens > limit:
            raise ValueError(
                f"prompt of {layout.length} rows ({num_fast} video rows + {layout.length - num_fast} text tokens) + "
                f"max_new_tokens {params.max_new_tokens} exceeds the maximum sequence length {limit}"
            )
        rows = row_ids(prompt.ids, prompt.video_index, num_fast)
        # At least one row must be prefilled to get the next token's logits.
        keep = min(common_prefix(self._rows, rows), len(rows) - 1)
        self._serial += 1  # from here on the cache holds this question's rows, not an earlier one's
        self._kv.rollback(keep)
        self._rows = self._rows[:keep]
        timings = self._video_timings()
        embeds = self._model.embed_rows(prompt, layout, self._video, keep)
        attend = prefill_attend_mask(layout, self._model.config.cross_attn, self._video is not None)[keep:]
        positions = torch.arange(keep, layout.length, dtype=torch.int64, device=self._model.device)[None]
        start = time.perf_counter()
        logits = self._runner.prefill(self._kv, self._video, embeds, positions, attend)
        self._runner.synchronize()
        timings["prefill_ms"] = _ms(start)
        self._rows = rows
        # A copy: the runner's logits buffer is shared, and another session may prefill before
        # this turn's first token is sampled (two interleaved streams).
        return _Turn(conversation, layout, params, timings, layout.length - keep, keep, first_logits=logits.clone(),
                     serial=self._serial)

    def _video_timings(self) -> dict[str, float]:
        # The video's own timings go with the first answer only: later ones did no video work.
        if self._video is None or not self._video_timings_pending:
            return {}
        self._video_timings_pending = False
        return dict(self._video.timings_ms)

    # -- decode -----------------------------------------------------------------------------

    def _decode(self, turn: _Turn) -> Iterator[int]:
        """Yield generated ids (the shared decode loop over this session's cache); finish the turn at the end."""
        attend = self._video is not None and self._rows_attend
        state = {"length": turn.layout.length}

        def step(token: int) -> torch.Tensor:
            if self.recompute_slow_kv_per_step and self._video is not None:
                self._video.recompute_slow_kv(self._model)
            logits = self._runner.decode_step(self._kv, self._video, token, state["length"], attend)
            if attend:
                self._rows.append(token)
            state["length"] += 1
            return logits

        first, turn.first_logits = turn.first_logits, None
        stops = set() if self.ignore_stop_tokens else self._stop_ids | set(turn.params.stop_token_ids)
        outcome = DecodeOutcome(ids=turn.ids)
        # Static and CUDA-graph steps embed and sample on the device (None: host sampling).
        device = self._runner.device_steps(
            self._kv, self._video, attend,
            before_step=(lambda: self._video.recompute_slow_kv(self._model))
            if self.recompute_slow_kv_per_step and self._video is not None else None,
            on_step=self._rows.append if attend else None)
        yield from decode_loop(first, step, turn.params, stops, self._model.tokenizer, turn.timings, outcome,
                               synchronize=self._runner.synchronize, device=device)
        turn.reason = outcome.reason
        self._finish(turn)

    def _finish(self, turn: _Turn) -> None:
        text = self._model.tokenizer.decode(turn.ids, skip_special_tokens=True)
        text, reason = apply_stop_strings(text, turn.reason, turn.params.stop_strings)
        conversation, note = turn.conversation, None
        try:
            conversation.set_answer(text)
        except ValueError as exc:
            # The answer spells a reserved string (e.g. "<image>" from ordinary tokens): the
            # template cannot hold it, so the turn (question and answer) is left out of the
            # history, and the result and a warning say so; the cache prefix stays valid.
            note = f"this turn is not kept in the session history: {exc}"
            warnings.warn(note, RuntimeWarning, stacklevel=2)
            conversation = Conversation(self._conversation.system, self._conversation.has_video,
                                        turns=[ChatTurn(t.question, t.answer) for t in conversation.turns[:-1]])
        self._conversation = conversation
        video = self._video
        self.last_result = RuntimeResult(
            text=text,
            token_ids=list(turn.ids),
            finish_reason=reason,
            frames=video.frames if video is not None else 0,
            slow_tokens=video.num_slow if video is not None else 0,
            fast_tokens=video.num_fast if video is not None else 0,
            prompt_tokens=turn.layout.length,
            timings_ms=turn.timings,
            prefill_rows=turn.prefill_rows,
            reused_rows=turn.reused_rows,
            backend=self._model.backend,
            history_note=note,
        )
