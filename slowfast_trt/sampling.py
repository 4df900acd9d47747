"""Sampling parameters and the token sampler every backend shares.

Processing order follows Hugging Face ``generate`` (which upstream uses): repetition penalty,
then temperature, top-k, top-p, then a draw. Upstream passes the prompt as embeddings, so
Hugging Face's repetition penalty only sees generated tokens; we do the same.
``temperature == 0`` means greedy decoding.
"""

from __future__ import annotations

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
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class TokenSampler:
    """Picks the next token from float logits; owns the random generator of one generation."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, generated: list[int]) -> int:
        p = self.params
        scores = logits.detach().to("cpu", torch.float32).reshape(-1).clone()
        if p.repetition_penalty != 1.0 and generated:
            ids = torch.tensor(sorted(set(generated)), dtype=torch.long)
            picked = scores[ids]
            scores[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
        if p.greedy:
            return int(torch.argmax(scores))
        scores = scores / p.temperature
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
        return int(torch.multinomial(probs, 1, generator=self.generator))
