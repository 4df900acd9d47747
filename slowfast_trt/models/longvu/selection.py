"""Which frames LongVU keeps, and in which resolution mode it encodes them: host-side decisions.

All of it depends on the prompt length ``n`` (``len(input_ids)``, the one ``-200`` placeholder
included), so a new question can change it (see :class:`Budget`).

DINO-similarity selection (``cambrian_arch.py`` ``select_frame``, quirks 10-11): with
``token_per_frame = lowres_token ** 2`` (``image_token_len`` when ``highres`` is off), frames are
only dropped when ``T >= max(1, budget_a // token_per_frame)``. Then, over windows of 16
consecutive frames (one window of all T when T < 16): each frame's flattened DINOv2 features
(576 * C) are L2-normalised, its score is the mean of its dot products with every frame of the
window, **itself included** (1.0), the window's middle frame ``len // 2`` gets score 0 (always
kept), and a frame is kept iff its score is ``< dino_threshold`` (strict). More than 400 survivors
are thinned to positions ``int(K / 400 * i)``.

Mode (``prepare_inputs...``, quirks 10 and 12), from K kept frames: ``K < budget_a // 144`` ->
``HIGH`` (12 x 12 tokens per frame); ``K > budget_a // 64`` -> ``TOO_MANY`` (upstream means to
downsample to 8 x 8 but its ``12 != 12`` guard never runs that code: still 12 x 12); otherwise
(boundaries included) ``MIX`` (8 x 8, the text-most-similar frames upgraded to 12 x 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slowfast_trt.models.longvu.config import LongVUConfig

__all__ = ["Budget", "HIGH", "MIX", "TOO_MANY", "WINDOW", "MAX_KEPT", "choose_mode", "select_frames", "window_scores"]

WINDOW = 16  # select_frame(window_size=16)
MAX_KEPT = 400  # select_frame: "in case of OOM"
HIGH, MIX, TOO_MANY = "high", "mix", "too_many"


@dataclass(frozen=True)
class Budget:
    """Token budgets of one prompt (quirk 9).

    Upstream looks for the hard-coded Qwen2 ``<|endoftext|>`` id (151643) in the prompt to find the
    text length; it is never there, so a bare ``except`` takes ``len(input_ids)`` = n, placeholder
    included: ``a = L - n - inference_max_length`` drives selection and the mode. The merge step
    counts the text embeddings, n - 1: ``b = L - inference_max_length - (n - 1) = a + 1`` drives the
    upgrade and the spatial drop.
    """

    prompt_ids: int  # n
    max_length: int  # L
    reserve: int  # inference_max_length

    @property
    def a(self) -> int:
        return self.max_length - self.prompt_ids - self.reserve

    @property
    def b(self) -> int:
        return self.max_length - self.reserve - (self.prompt_ids - 1)

    @classmethod
    def of(cls, config: LongVUConfig, prompt_ids: int) -> "Budget":
        return cls(prompt_ids, config.max_length, config.inference_max_length)


def window_scores(features: torch.Tensor) -> torch.Tensor:
    """(W, 576, C) DINO features of one window -> (W,) mean similarity, before the middle is zeroed."""
    flat = features.flatten(1, 2)
    flat = flat / torch.norm(flat, dim=1, keepdim=True)
    return torch.mean(flat @ flat.T, dim=1)


def _keep_in_window(features: torch.Tensor, threshold: float) -> torch.Tensor:
    scores = window_scores(features)
    scores[len(features) // 2] = 0
    return torch.where(scores < threshold)[0]


def select_frames(dino: torch.Tensor, config: LongVUConfig, budget: Budget) -> list[int]:
    """Indices (ascending) of the frames kept out of T, from their DINOv2 features (T, 576, C)."""
    total = int(dino.shape[0])
    per_frame = config.lowres_token**2 if config.highres else config.image_token_len
    if total < max(1, budget.a // per_frame):
        return list(range(total))
    kept: list[int] = []
    if total // WINDOW == 0:
        kept = _keep_in_window(dino, config.dino_threshold).tolist()
    else:
        for start in range(0, total, WINDOW):
            window = dino[start : start + WINDOW]
            kept.extend(int(i) + start for i in _keep_in_window(window, config.dino_threshold))
        if len(kept) > MAX_KEPT:
            interval = len(kept) / float(MAX_KEPT)
            kept = [kept[int(interval * i)] for i in range(MAX_KEPT)]
    return kept


def choose_mode(kept: int, config: LongVUConfig, budget: Budget) -> str:
    """HIGH, MIX or TOO_MANY for ``kept`` frames (see the module docstring)."""
    max_frames = max(1, math.floor(budget.a // config.image_token_len))
    max_frames_low = max(1, math.floor(budget.a // (config.lowres_token**2)))
    if kept < max_frames:
        return HIGH
    if kept > max_frames_low:
        return TOO_MANY
    return MIX if config.highres else HIGH
