"""The one decode loop, its result type and stop strings: shared by the reference generator and sessions.

A backend supplies the prefill's last-row logits and a ``step(token) -> logits`` that appends one
token to its cache; :func:`decode_loop` samples, applies stop tokens, ``max_new_tokens`` and stop
strings, records ``ttft_ms`` and ``decode_ms_per_token``, and yields each generated id as soon as it
is sampled (streaming text reads them one by one).

A backend that samples on its device passes :class:`DeviceSteps` instead of ``step``: the loop is
the same, only where a token comes from differs (the device, read back asynchronously, with the
step that consumes it already queued, so the device does not wait for the host's checks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

from slowfast_trt.sampling import SamplingParams, TokenSampler

__all__ = ["DecodeOutcome", "DeviceSteps", "GenerationResult", "apply_stop_strings", "decode_loop", "hits_stop_string"]


class DeviceSteps(Protocol):
    """Decode steps that embed, run and sample on a device (``runtime/device_sampling.py``)."""

    def start(self, first_logits: torch.Tensor, params: SamplingParams) -> None:
        """Sample the first token from the prefill's logits."""

    def launch(self) -> None:
        """Queue the step that consumes the newest sampled token (and samples the next)."""

    def read(self) -> int:
        """The oldest sampled token not read yet."""

    def finish(self, stepped: int) -> None:
        """``stepped`` generated tokens went through the decoder; a step queued beyond is dropped."""


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    frames: int
    slow_tokens: int
    fast_tokens: int
    prompt_tokens: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "frames": self.frames,
            "slow_tokens": self.slow_tokens,
            "fast_tokens": self.fast_tokens,
            "prompt_tokens": self.prompt_tokens,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


@dataclass
class DecodeOutcome:
    """What :func:`decode_loop` leaves behind: the ids so far and why it stopped."""

    ids: list[int] = field(default_factory=list)
    reason: str = "length"


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def decode_loop(
    first_logits: torch.Tensor,
    step: Callable[[int], torch.Tensor],
    params: SamplingParams,
    stop_ids: set[int],
    tokenizer,
    timings: dict[str, float],
    outcome: DecodeOutcome,
    synchronize: Callable[[], None] = lambda: None,
    device: DeviceSteps | None = None,
) -> Iterator[int]:
    """Sample from ``first_logits``, then ``step(token)`` per generated token, until a stop.

    ``timings`` gets ``ttft_ms`` (its ``prefill_ms`` plus the first sample) and
    ``decode_ms_per_token``; ``outcome`` gets the ids and the finish reason ("stop",
    "length" or "stop_string"); the caller cuts the text at a stop string
    (:func:`apply_stop_strings`). With ``device`` (``step`` unused) tokens are sampled on the
    device; the token ids are the host sampler's for greedy decoding (see ``device_sampling``).
    """
    ids = outcome.ids
    if device is not None:
        tokens = _device_tokens(first_logits, device, params)
    else:
        tokens = _host_tokens(first_logits, step, params, ids)
    start = time.perf_counter()
    decode_start = None
    try:
        for token in tokens:
            if token in stop_ids:
                outcome.reason = "stop"
                break
            ids.append(token)
            if len(ids) == 1:
                timings["ttft_ms"] = timings.get("prefill_ms", 0.0) + _ms(start)
                decode_start = time.perf_counter()
            yield token
            if len(ids) >= params.max_new_tokens:
                outcome.reason = "length"
                break
            if hits_stop_string(tokenizer, ids, params.stop_strings):
                outcome.reason = "stop_string"
                break
    finally:
        tokens.close()
    synchronize()
    if decode_start is not None:
        timings["decode_ms_per_token"] = _ms(decode_start) / max(len(ids) - 1, 1)


def _host_tokens(first_logits, step, params: SamplingParams, ids: list[int]) -> Iterator[int]:
    """Tokens sampled on the host; ``step(token)`` runs only when the loop asks for the next one."""
    sampler = TokenSampler(params)
    token = sampler(first_logits, ids)
    while True:
        yield token
        token = sampler(step(token), ids)


def _device_tokens(first_logits, device: DeviceSteps, params: SamplingParams) -> Iterator[int]:
    """Tokens sampled on the device. Token k's step is queued before token k is read (when a
    token k + 1 may still be wanted); the loop used the steps of tokens 1 .. k - 1 when it stops
    at token k, whatever the reason, and one queued beyond is dropped."""
    device.start(first_logits, params)
    read = 0
    try:
        while True:
            read += 1
            if read < params.max_new_tokens:
                device.launch()
            yield device.read()
    finally:
        device.finish(max(read - 1, 0))


def hits_stop_string(tokenizer, ids: list[int], stop_strings: tuple[str, ...]) -> bool:
    """Whether the text of ``ids`` now contains one of ``stop_strings``."""
    if not stop_strings:
        return False
    # Only the tail can newly contain a stop string; decode a window wide enough for the longest.
    tail = tokenizer.decode(ids[-(max(len(s) for s in stop_strings) + 8):], skip_special_tokens=True)
    return any(s in tail for s in stop_strings)


def apply_stop_strings(text: str, reason: str, stop_strings: tuple[str, ...]) -> tuple[str, str]:
    """``text`` cut before the first stop string it contains (and the reason then "stop_string")."""
    cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
    return (text[:cut], "stop_string") if cut >= 0 else (text, reason)
