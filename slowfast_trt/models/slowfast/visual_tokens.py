"""Projector, video pooling and the slow/fast token split (upstream ``encode_images`` and
``split_slow_fast_tokens``).

| input     | shape            | dtype | meaning                                        |
|-----------|------------------|-------|------------------------------------------------|
| features  | (T, n, C_vis)    | T     | vision tower output, n = g*g grid tokens       |
| -> slow   | (T * n', hidden) | T     | every frame after video pooling, frame-major   |
| -> fast   | (F * n'', hidden)| T     | temporally pooled frames, spatially strided    |

Videos (T > 1): 2D average pooling with ``mm_video_pooling_stride`` on the grid after the
projector (18x18 -> 9x9 at 576 px). Single images (T == 1) are not pooled.
Fast tokens of a video: take frames by ``fast_token_temporal_sampling_stride`` (upstream
``sample_fast_frames``), then if ``frames // temporal_stride >= min_fast_frames`` an
``avg_pool3d`` over ``temporal_stride`` frames (remainder dropped), else adaptive average
pooling to ``min(frames, min_fast_frames)`` frames; then 2D pooling by the spatial stride.
Upstream zero-pads the frames to a multiple of the strides first, but the frame indices it
takes afterwards never reach the padding, so the padding has no effect and is not done here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slowfast_trt.models.slowfast.config import VisualConfig


class Projector(nn.Sequential):
    """``linear`` / ``mlp<N>x_gelu`` / ``identity``; Sequential indices match upstream names."""

    def __init__(self, visual: VisualConfig, hidden: int):
        depth = visual.projector_depth
        modules: list[nn.Module] = []
        if depth == 0:
            modules.append(nn.Identity())
        else:
            modules.append(nn.Linear(visual.mm_hidden_size, hidden))
            for _ in range(1, depth):
                modules.append(nn.GELU())
                modules.append(nn.Linear(hidden, hidden))
        super().__init__(*modules)


def grid_side(tokens_per_frame: int) -> int:
    side = math.isqrt(tokens_per_frame)
    if side * side != tokens_per_frame:
        raise ValueError(f"visual tokens per frame ({tokens_per_frame}) do not form a square grid")
    return side


def pool_grid(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(T, g*g, C) -> (T, (g//stride)^2, C) by average pooling on the grid."""
    if stride <= 1:
        return x
    frames, n, channels = x.shape
    side = grid_side(n)
    grid = x.reshape(frames, side, side, channels).permute(0, 3, 1, 2)
    pooled = nn.functional.avg_pool2d(grid, kernel_size=stride, stride=stride)
    return pooled.flatten(2).transpose(1, 2)


def fast_frame_indices(frames: int, sampling_stride: int, min_fast_frames: int) -> list[int]:
    """Upstream ``sample_fast_frames`` (identity when the sampling stride is 1)."""
    if sampling_stride <= 1 or frames < min_fast_frames:
        return list(range(frames))
    count = max(frames // sampling_stride, min_fast_frames)
    step = frames / count
    return [min(int(i * step), frames - 1) for i in range(count)]


def fast_frame_count(frames: int, visual: VisualConfig) -> int:
    """How many frames the fast tokens of a ``frames``-frame video represent."""
    if frames == 1:
        return 1
    sampled = len(fast_frame_indices(frames, visual.fast_temporal_sampling_stride, visual.min_fast_frames))
    stride = visual.fast_temporal_stride
    if stride <= 1:
        return sampled
    if sampled // stride >= visual.min_fast_frames:
        return sampled // stride
    return min(sampled, visual.min_fast_frames)


def uses_avg_pool3d(frames: int, visual: VisualConfig) -> bool:
    """True when the fast tokens take the ``avg_pool3d`` branch (else adaptive pooling)."""
    sampled = len(fast_frame_indices(frames, visual.fast_temporal_sampling_stride, visual.min_fast_frames))
    return frames > 1 and visual.fast_temporal_stride > 1 and sampled // visual.fast_temporal_stride >= visual.min_fast_frames


def split_slow_fast(pooled: torch.Tensor, visual: VisualConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, n, hidden) projected (and, for videos, pooled) tokens -> (slow, fast), both 2-D."""
    frames, n, channels = pooled.shape
    slow = pooled.reshape(frames * n, channels)
    x = pooled
    if frames > 1:
        idx = fast_frame_indices(frames, visual.fast_temporal_sampling_stride, visual.min_fast_frames)
        if idx != list(range(frames)):
            x = x[torch.tensor(idx, device=x.device)]
        side = grid_side(n)
        grid = x.reshape(x.shape[0], side, side, channels).permute(3, 0, 1, 2)[None]  # 1,C,F,g,g
        stride = visual.fast_temporal_stride
        if stride > 1:
            if x.shape[0] // stride >= visual.min_fast_frames:
                grid = nn.functional.avg_pool3d(grid, kernel_size=(stride, 1, 1))
            else:
                out_frames = min(x.shape[0], visual.min_fast_frames)
                grid = nn.functional.adaptive_avg_pool3d(grid, (out_frames, side, side))
        x = grid[0].permute(1, 2, 3, 0).reshape(-1, n, channels)
    x = pool_grid(x, visual.fast_spatial_stride)
    return slow, x.reshape(-1, channels)


def video_pooling_stride(frames: int, visual: VisualConfig) -> int:
    return visual.video_pooling_stride if frames > 1 else 1


def encode_visual_tokens(features: torch.Tensor, projector: Projector, visual: VisualConfig):
    """Vision-tower features (T, n, C_vis) -> (slow, fast) tokens in the LLM hidden size."""
    projected = projector(features)
    pooled = pool_grid(projected, video_pooling_stride(features.shape[0], visual))
    return split_slow_fast(pooled, visual)
