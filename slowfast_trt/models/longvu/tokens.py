"""From connector tokens to the prompt's visual rows: unpadding, newlines, the text-guided
upgrade, the spatial drop and the sequence (``cambrian_arch.py`` ``prepare_inputs...``).

``image_sizes`` quirk (8): the README passes ``image_sizes = [frame.shape[:2]]`` = (H, W), and
``unpad_image`` / ``unmask_attention_mask`` unpack it as ``(width, height)``. With (a, b) the
pair as passed and a grid of side s: if ``a / b > 1`` (portrait) rows ``[p, s - p)`` are kept with
``p = (s - int(b * (s / a))) // 2``, else (landscape, square) columns with
``p = (s - int(a * (s / b))) // 2``. A landscape frame is padded top and bottom, so upstream crops
content columns and keeps the padding rows (16:9: 12 x 6 + 12 = 84 tokens instead of 6 x 12 + 6).
The low-resolution grid uses the pair ``(int(a / 1.5), int(b / 1.5))`` (1.5 = 12 / 8). The SVA
mask (:func:`cell_mask`) zeroes the same swapped rows or columns of the 24 x 24 tower grid.

Merge (quirks 14 and 15), with ``budget.b`` and per-frame counts after unpadding and newlines:

* MIX: ``highres_num = floor((b - K * low) / (high - low))`` when ``b > K * low``; if >= 1 the
  frames whose low-res tokens (newlines included) have the largest mean dot product with the
  embeddings of the text **after** the placeholder are upgraded, in frame order;
* if ``b`` < the visual tokens and nothing was upgraded: 8-frame chunks, each chunk's first frame
  kept whole, another frame's token t kept iff its cosine with the first frame's token t is
  ``< drop_threshold`` (newlines, cosine 1, always go); if still over ``b``,
  ``ceil(excess / chunks)`` tokens are cut from the end of **every** chunk, then the whole block
  is cut to ``b`` (it can end below ``b``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from slowfast_trt.models.longvu.config import TOWER_GRID, LongVUConfig
from slowfast_trt.models.longvu.selection import MIX, Budget

__all__ = ["DROP_CHUNK", "VisualRows", "cell_mask", "frame_rows", "kept_span", "merge_visual", "splice"]

DROP_CHUNK = 8


def kept_span(size_hw: tuple[int, int], side: int) -> tuple[str, int, int]:
    """("rows" | "cols", start, stop) of a side x side grid kept by upstream's unpad for (H, W)."""
    a, b = size_hw  # passed as (H, W), read as (width, height)
    if a / b > side / side:
        new = int(b * (side / a))
        pad = (side - new) // 2
        return "rows", pad, side - pad
    new = int(a * (side / b))
    pad = (side - new) // 2
    return "cols", pad, side - pad


def _low_size(size_hw: tuple[int, int], config: LongVUConfig) -> tuple[int, int]:
    factor = config.image_token_len**0.5 / config.lowres_token
    return int(size_hw[0] / factor), int(size_hw[1] / factor)


def cell_mask(size_hw: tuple[int, int], config: LongVUConfig) -> torch.Tensor:
    """(Q, 2 * r * r) bool: which tower tokens each query cell attends to (both towers alike)."""
    a, b = size_hw
    grid = torch.ones(TOWER_GRID, TOWER_GRID, dtype=torch.bool)
    if a / b > 1:
        pad = (TOWER_GRID - int(b * (TOWER_GRID / a))) // 2
        if pad > 0:
            grid[:pad], grid[-pad:] = False, False
    else:
        pad = (TOWER_GRID - int(a * (TOWER_GRID / b))) // 2
        if pad > 0:
            grid[:, :pad], grid[:, -pad:] = False, False
    side, r = config.query_side, config.kv_size
    cells = grid.view(side, r, side, r).permute(0, 2, 1, 3).reshape(side * side, r * r)
    cells[cells.sum(-1) == 0] = True
    return torch.cat((cells, cells), dim=1)


def frame_rows(grid_tokens: torch.Tensor, size_hw: tuple[int, int], newline: torch.Tensor) -> torch.Tensor:
    """(K, s*s, H) tokens -> (K, P, H): unpadded (quirk 8), a newline after every row, row-major."""
    k, count, hidden = grid_tokens.shape
    side = int(math.isqrt(count))
    grid = grid_tokens.view(k, side, side, hidden)
    axis, start, stop = kept_span(size_hw, side)
    grid = grid[:, start:stop] if axis == "rows" else grid[:, :, start:stop]
    rows = grid.shape[1]
    nl = newline.to(grid.dtype).view(1, 1, 1, hidden).expand(k, rows, 1, hidden)
    return torch.cat((grid, nl), dim=2).reshape(k, -1, hidden)


@dataclass
class VisualRows:
    """The visual rows of one prompt and how they were chosen (reported by ``run --json``)."""

    rows: torch.Tensor  # (V, H)
    upgraded: list[int] = field(default_factory=list)  # positions among the kept frames
    dropped: bool = False
    chunk_lengths: list[int] | None = None  # after the cosine drop, before the forced removal
    force_remove: int | None = None
    frame_sim: torch.Tensor | None = None  # MIX: per-frame text similarity


def _upgrade(low: torch.Tensor, high: torch.Tensor, text_after: torch.Tensor, budget: int) -> tuple[list[int], torch.Tensor | None]:
    k = low.shape[0]
    visual_len = k * low.shape[1]
    if budget <= visual_len:
        return [], None
    count = math.floor((budget - visual_len) / (high.shape[1] - low.shape[1]))
    if count < 1:
        return [], None
    flat = low.reshape(-1, low.shape[-1])
    sim = torch.matmul(flat, text_after.transpose(0, 1)).mean(dim=-1)
    frame_sim = sim.reshape(k, -1).mean(dim=-1)
    top = torch.topk(frame_sim, min(count, k)).indices
    return sorted(int(i) for i in top), frame_sim


def _drop(frames: torch.Tensor, threshold: float, budget: int) -> tuple[torch.Tensor, list[int], int | None]:
    chunks = []
    for start in range(0, frames.shape[0], DROP_CHUNK):
        chunk = frames[start : start + DROP_CHUNK]
        if len(chunk) == 1:
            chunks.append(chunk[0])
            continue
        rest = chunk[1:]
        sim = F.cosine_similarity(chunk[0].unsqueeze(0).repeat_interleave(len(rest), dim=0), rest, dim=-1)
        chunks.append(torch.cat((chunk[0], rest.flatten(0, 1)[sim.flatten(0, 1) < threshold]), dim=0))
    lengths = [int(c.shape[0]) for c in chunks]
    force = None
    if sum(lengths) > budget:
        force = math.ceil((sum(lengths) - budget) / len(chunks))
        chunks = [c[:-force] for c in chunks]
    return torch.cat(chunks, dim=0)[:budget], lengths, force


def merge_visual(
    high: torch.Tensor,
    low: torch.Tensor | None,
    mode: str,
    size_hw: tuple[int, int],
    newline: torch.Tensor,
    text_after: torch.Tensor,
    config: LongVUConfig,
    budget: Budget,
) -> VisualRows:
    """Connector tokens of the K kept frames -> the visual rows of the prompt.

    ``high`` (K, 144, H); ``low`` (K, 64, H), read in MIX mode only; ``text_after`` (n_after, H):
    embeddings of the prompt ids after the placeholder.
    """
    high_rows = frame_rows(high, size_hw, newline)
    if mode == MIX and config.image_token_len > config.lowres_token**2:
        frames = frame_rows(low, _low_size(size_hw, config), newline)
        upgraded, frame_sim = _upgrade(frames, high_rows, text_after, budget.b)
    else:
        frames, upgraded, frame_sim = high_rows, [], None
    visual_len = frames.shape[0] * frames.shape[1]
    if upgraded:
        pick = set(upgraded)
        rows = torch.cat([high_rows[i] if i in pick else frames[i] for i in range(frames.shape[0])], dim=0)
        return VisualRows(rows, upgraded=upgraded, frame_sim=frame_sim)
    if budget.b < visual_len:
        rows, lengths, force = _drop(frames, config.drop_threshold, budget.b)
        return VisualRows(rows, dropped=True, chunk_lengths=lengths, force_remove=force, frame_sim=frame_sim)
    return VisualRows(frames.reshape(-1, frames.shape[-1]), frame_sim=frame_sim)


def splice(before: torch.Tensor, visual: torch.Tensor, after: torch.Tensor, max_length: int) -> torch.Tensor:
    """``[embed(text before), visual, embed(text after)]`` cut to ``tokenizer_model_max_length``."""
    return torch.cat((before, visual, after), dim=0)[:max_length]
