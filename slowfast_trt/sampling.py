"""Sampling parameters and the token sampler every backend shares.

Processing order follows Hugging Face ``generate`` (which upstream uses): repetition penalty,
then temperature, top-k, top-p, then a draw. Upstream passes the prompt as embeddings, so
Hugging Face's repetition penalty only sees generated tokens; we do the same.
``temperature == 0`` means greedy decoding.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = 0

    def __post_init__(self):
        # Every field is checked for type and range: a bad value is a ValueError naming it,
        # never a failure deep in the sampler (nan temperature, a string seed).
        _integer("max_new_tokens", self.max_new_tokens, low=1)
        _real("temperature", self.temperature, ">= 0 (0 = greedy)", lambda v: v >= 0)
        _real("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _integer("top_k", self.top_k, low=0, hint=" (0 disables it)")
        _real("repetition_penalty", self.repetition_penalty, "> 0 (1 disables it)", lambda v: v > 0)
        if not isinstance(self.stop_token_ids, tuple):
            raise ValueError(f"stop_token_ids must be a tuple of token ids, got {self.stop_token_ids!r}")
        for token in self.stop_token_ids:
            _integer("stop_token_ids", token, low=0, hint=" (token ids)")
        if not isinstance(self.stop_strings, tuple):
            raise ValueError(f"stop_strings must be a tuple of strings, got {self.stop_strings!r}")
        for text in self.stop_strings:
            if not isinstance(text, str) or not text:
                # An empty stop string is found in every text: the answer would end after one token.
                raise ValueError(f"stop_strings must be non-empty strings, got {text!r}")
        if self.seed is not None:
            _integer("seed", self.seed, low=-(2**63), high=2**64 - 1, hint=" or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _integer(name: str, value, low: int, high: int | None = None, hint: str = "") -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}{hint}, got {value!r}")


def _real(name: str, value, expected: str, check) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not check(value):
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")


def sampling_params(**sampling) -> SamplingParams:
    """``SamplingParams`` from keyword arguments; unknown names are a ``ValueError`` naming them."""
    known = set(SamplingParams.__dataclass_fields__)
    unknown = sorted(set(sampling) - known)
    if unknown:
        raise ValueError(f"unknown sampling argument(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("stop_token_ids", "stop_strings"):
        if key in sampling and not isinstance(sampling[key], tuple):
            value = sampling[key]
            sampling[key] = (value,) if isinstance(value, (str, int)) else tuple(value)
    return SamplingParams(**sampling)


class TokenSampler:
    """Picks the next token from float logits; owns the random generator of one generation."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(params.seed))

    def __call__(self, logits: torch.Tensor, generated: list[int]) -> int:
        p = self.params
        scores = logits.detach().to("cpu", torch.float32).reshape(-1).clone()
        if p.repetition_penalty != 1.0 and generated:
            ids = torch.tensor(sorted(set(generated)), dtype=torch.long)
            picked = scores[ids]
            scores[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
        if p.greedy:
            return int(torch.argmax(scores))
        scaled = scores / p.temperature
        if bool(torch.isinf(scaled).any()) and not bool(torch.isinf(scores).any()):
            # A temperature so small that finite scores overflow (or below float32's range, a
            # division by zero): the distribution is its limit, the best-scored token(s).
            scaled = torch.where(scores == scores.max(), 0.0, float("-inf"))
        scores = scaled
        if p.top_k and p.top_k < scores.numel():
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - p.top_p)
            remove[-1] = False  # keep at least the most likely token
            scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        probs = scores.softmax(-1)
        if not bool(torch.isfinite(probs).all()):
            # A tiny repetition penalty overflowed scores to inf: uniform over the best-scored tokens.
            probs = (scores == scores.max()).to(torch.float32)
        return int(torch.multinomial(probs, 1, generator=self.generator))
