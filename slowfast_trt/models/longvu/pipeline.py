"""LongVU's video -> prompt rows pipeline, the same for eager modules and for engines.

A backend supplies :class:`Stages` (callables for DINOv2, SigLIP, the connector and the token
embedding); :class:`LongVUEncoder` runs::

    uint8 frames (T, H, W, 3) --pad + bicubic (pixels.py)--> SigLIP pixels, DINOv2 pixels
      --DINOv2 on all T--> (T, 576, C_d)                                   [VideoFeatures: per video]
    prompt ids (n, one -200)
      --selection (budget a of n)--> K kept frames --mode (a)--> HIGH / MIX / TOO_MANY
      --SigLIP + connector on kept frames not yet cached--> high (144), low (64) per frame  [cached]
      --unpad + newlines, upgrade or drop (budget b = a + 1)--> visual rows
      --[embed(before), visual, embed(after)][:L]--> inputs_embeds (length, H)

What :class:`VideoFeatures` keeps per video: the frame size, both towers' pixels (the DINOv2
ones only until its features exist), the DINOv2 features of every sampled frame, and SigLIP +
connector tokens of every frame some question kept. A follow-up question recomputes selection,
mode and merge (they depend on its length and its text) from these, and runs SigLIP and the
connector only for kept frames not seen before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from slowfast_trt.models.longvu.config import LongVUConfig
from slowfast_trt.models.longvu.pixels import tower_pixels
from slowfast_trt.models.longvu.selection import Budget, choose_mode, select_frames
from slowfast_trt.models.longvu.tokens import VisualRows, cell_mask, merge_visual, splice
from slowfast_trt.prompt import PromptTokens

__all__ = ["LongVUEncoder", "PromptRows", "Stages", "VideoFeatures"]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


@dataclass(frozen=True)
class Stages:
    """What a backend runs. Tensors come back on any device; the encoder moves what it needs."""

    dino: Callable[[np.ndarray], torch.Tensor]  # uint8 (N, 378, 378, 3) -> (N, 576, C_d)
    siglip: Callable[[np.ndarray], torch.Tensor]  # uint8 (N, 384, 384, 3) -> (N, 576, C_s)
    connector: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    embed: Callable[[Sequence[int]], torch.Tensor]  # ids -> (len, H)
    newline: torch.Tensor  # (H,) image_newline


@dataclass
class VideoFeatures:
    """Per-video state kept across questions (see the module docstring)."""

    size_hw: tuple[int, int]
    frames: int
    siglip_pixels: np.ndarray  # (T, 384, 384, 3) uint8
    dino: torch.Tensor  # (T, 576, C_d)
    mask: torch.Tensor  # (144, 8) bool, from the frame size only
    tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # frame -> (high, low)
    timings_ms: dict[str, float] = field(default_factory=dict)
    frame_indices: list[int] | None = None  # video frame index of each sampled frame, when read from a file

    def release(self) -> None:
        self.siglip_pixels = np.zeros((0,), dtype=np.uint8)
        self.dino = None
        self.tokens.clear()

    @property
    def released(self) -> bool:
        return self.dino is None

    @property
    def nbytes(self) -> int:
        """Bytes held: DINOv2 features, cached tokens and the SigLIP pixels (host)."""
        tensors = [self.dino] if self.dino is not None else []
        tensors += [t for pair in self.tokens.values() for t in pair]
        return int(self.siglip_pixels.nbytes) + sum(int(t.numel()) * t.element_size() for t in tensors)


@dataclass
class PromptRows:
    """One question's visual rows and the whole prefill input."""

    embeds: torch.Tensor  # (length, H)
    kept: list[int]  # sampled-frame positions kept by selection
    mode: str
    visual: VisualRows
    budget: Budget
    new_frames: int  # kept frames that needed SigLIP + connector for this question

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def visual_tokens(self) -> int:
        return int(self.visual.rows.shape[0])


class LongVUEncoder:
    """Runs :class:`Stages` with upstream's host decisions in between."""

    def __init__(self, config: LongVUConfig, stages: Stages):
        self.config = config
        self.stages = stages

    def encode_video(self, frames: np.ndarray) -> VideoFeatures:
        """uint8 RGB (T, H, W, 3) -> both towers' pixels and the DINOv2 features of all T frames."""
        if frames.ndim != 4 or frames.shape[0] < 1:
            raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got shape {tuple(frames.shape)}")
        timings = {}
        start = time.perf_counter()
        siglip_pixels = tower_pixels(frames, "siglip")
        dino_pixels = tower_pixels(frames, "dino")
        timings["preprocess_ms"] = _ms(start)
        start = time.perf_counter()
        dino = self.stages.dino(dino_pixels)
        timings["dino_ms"] = _ms(start)
        size = (int(frames.shape[1]), int(frames.shape[2]))  # image_sizes = frame.shape[:2] = (H, W)
        return VideoFeatures(size, int(frames.shape[0]), siglip_pixels, dino, cell_mask(size, self.config),
                             timings_ms=timings)

    def _tokens(self, video: VideoFeatures, kept: list[int], timings: dict) -> int:
        missing = [i for i in kept if i not in video.tokens]
        if not missing:
            return 0
        start = time.perf_counter()
        siglip = self.stages.siglip(video.siglip_pixels[missing])
        timings["siglip_ms"] = _ms(start)
        start = time.perf_counter()
        dino = video.dino[torch.as_tensor(missing, device=video.dino.device)].to(siglip.device)
        high, low = self.stages.connector(siglip, dino, video.mask)
        timings["connector_ms"] = _ms(start)
        for j, i in enumerate(missing):
            video.tokens[i] = (high[j], low[j])
        return len(missing)

    def prompt_rows(self, video: VideoFeatures, prompt: PromptTokens, timings: dict | None = None) -> PromptRows:
        """Selection, mode, tokens and merge for one prompt (one placeholder) about ``video``."""
        if prompt.video_index is None:
            raise ValueError("a LongVU prompt about a video needs the <image> placeholder")
        timings = {} if timings is None else timings
        config = self.config
        budget = Budget.of(config, len(prompt.ids))
        start = time.perf_counter()
        kept = select_frames(video.dino, config, budget)
        timings["select_ms"] = _ms(start)
        if not kept:
            raise ValueError("DINO frame selection kept no frame")  # cannot happen: a window keeps its middle
        mode = choose_mode(len(kept), config, budget)
        new = self._tokens(video, kept, timings)
        start = time.perf_counter()
        high = torch.stack([video.tokens[i][0] for i in kept])
        low = torch.stack([video.tokens[i][1] for i in kept])
        after = self.stages.embed(prompt.text_ids_after).to(high.device, high.dtype)
        newline = self.stages.newline.to(high.device, high.dtype)
        visual = merge_visual(high, low, mode, video.size_hw, newline, after, config, budget)
        before = self.stages.embed(prompt.text_ids_before).to(high.device, high.dtype)
        embeds = splice(before, visual.rows, after, config.max_length)
        timings["merge_ms"] = _ms(start)
        return PromptRows(embeds, kept, mode, visual, budget, new)
