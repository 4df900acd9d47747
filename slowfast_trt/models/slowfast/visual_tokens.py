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

Pooling as data
---------------
Every pooling above is linear, and only the temporal one depends on the frame count. So the
exported graphs take it as data, float32 matrices the host builds (:func:`pooling_matrices`):

| matrix          | shape                 | what it does                                             |
|-----------------|-----------------------|----------------------------------------------------------|
| grid_pool       | (n', g*g)             | 2D video pooling of each frame (identity for an image)   |
| temporal_pool   | (F, T)                | fast-frame sampling + avg_pool3d / adaptive pooling      |
| spatial_pool    | (n'', n')             | the fast tokens' 2D pooling (identity at stride 1)       |

``frame_tokens = grid_pool @ projector(features)`` per frame (:func:`project_frames`), the
slow tokens are the frame tokens, frame-major, and ``fast = spatial_pool @ (temporal_pool @
frame_tokens)`` (:func:`pool_fast`). Row ``f`` of ``temporal_pool`` holds ``1 / |bin f|`` at
the frames of fast frame ``f``'s bin (:func:`fast_frame_bins`). The products run in float32;
they equal the model's own pooling (:func:`split_slow_fast`) up to float32 rounding (tested
for every T up to 128 against 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# -- pooling as data (module docstring) ---------------------------------------------------------


def fast_frame_bins(frames: int, visual: VisualConfig) -> list[list[int]]:
    """Source frames averaged into each fast frame of a ``frames``-frame video (upstream's
    sampling, then avg_pool3d windows or adaptive-pooling bins); ``[[0]]`` for an image."""
    if frames == 1:
        return [[0]]
    idx = fast_frame_indices(frames, visual.fast_temporal_sampling_stride, visual.min_fast_frames)
    stride = visual.fast_temporal_stride
    if stride <= 1:
        return [[i] for i in idx]
    if uses_avg_pool3d(frames, visual):
        return [idx[i * stride : (i + 1) * stride] for i in range(len(idx) // stride)]
    count, out = len(idx), min(len(idx), visual.min_fast_frames)
    # adaptive_avg_pool: bin i covers floor(i*n/out) .. ceil((i+1)*n/out) - 1
    return [idx[(i * count) // out : -((-(i + 1) * count) // out)] for i in range(out)]


def grid_pool_matrix(side: int, stride: int) -> torch.Tensor:
    """(out*out, side*side) float32: ``avg_pool2d(kernel=stride, stride=stride)`` on a
    side x side grid of tokens (row-major), as a matrix; out = side // stride (floor)."""
    if stride <= 1:
        return torch.eye(side * side, dtype=torch.float32)
    out = side // stride
    matrix = torch.zeros(out * out, side * side, dtype=torch.float32)
    weight = 1.0 / (stride * stride)
    for i in range(out):
        for j in range(out):
            for a in range(stride):
                for b in range(stride):
                    matrix[i * out + j, (i * stride + a) * side + j * stride + b] = weight
    return matrix


def temporal_pool_matrix(frames: int, visual: VisualConfig) -> torch.Tensor:
    """(F, frames) float32: row f averages the frames of fast frame f's bin."""
    bins = fast_frame_bins(frames, visual)
    matrix = torch.zeros(len(bins), frames, dtype=torch.float32)
    for f, members in enumerate(bins):
        for t in members:
            matrix[f, t] += 1.0 / len(members)
    return matrix


@dataclass(frozen=True)
class PoolingMatrices:
    """The three pooling matrices of a ``frames``-frame video (module docstring), float32."""

    frames: int
    grid_pool: torch.Tensor  # (n', g*g)
    temporal_pool: torch.Tensor  # (F, T)
    spatial_pool: torch.Tensor  # (n'', n')

    @property
    def tokens_per_frame(self) -> int:
        return int(self.grid_pool.shape[0])

    @property
    def fast_tokens(self) -> int:
        return int(self.temporal_pool.shape[0] * self.spatial_pool.shape[0])

    def to(self, device) -> "PoolingMatrices":
        return PoolingMatrices(self.frames, self.grid_pool.to(device), self.temporal_pool.to(device),
                               self.spatial_pool.to(device))


def pooling_matrices(frames: int, visual: VisualConfig, grid_tokens: int) -> PoolingMatrices:
    """The pooling of a ``frames``-frame video (1: an image) over ``grid_tokens`` vision tokens
    per frame, as data."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    side = grid_side(grid_tokens)
    grid = grid_pool_matrix(side, video_pooling_stride(frames, visual))
    pooled_side = grid_side(grid.shape[0])
    spatial = grid_pool_matrix(pooled_side, visual.fast_spatial_stride)
    return PoolingMatrices(frames, grid, temporal_pool_matrix(frames, visual), spatial)


def video_grid_pool(visual: VisualConfig, grid_tokens: int) -> torch.Tensor:
    """``grid_pool`` of every video frame (T > 1): what a stream encodes each frame with."""
    return grid_pool_matrix(grid_side(grid_tokens), visual.video_pooling_stride)


def project_frames(features: torch.Tensor, projector: nn.Module, grid_pool: torch.Tensor) -> torch.Tensor:
    """(N, g*g, C_vis) features -> (N, n', hidden) frame tokens: the projector, then the
    per-frame 2D pooling as a float32 product (``grid_pool`` (n', g*g))."""
    projected = projector(features)
    return torch.matmul(grid_pool.to(torch.float32), projected.to(torch.float32)).to(projected.dtype)


def pool_fast(frame_tokens: torch.Tensor, temporal_pool: torch.Tensor, spatial_pool: torch.Tensor) -> torch.Tensor:
    """(T, n', hidden) frame tokens -> (F, n'', hidden) fast tokens, in float32 inside."""
    frames, tokens, hidden = frame_tokens.shape
    x = frame_tokens.to(torch.float32).reshape(frames, tokens * hidden)
    x = torch.matmul(temporal_pool.to(torch.float32), x).reshape(-1, tokens, hidden)  # (F, n', hidden)
    return torch.matmul(spatial_pool.to(torch.float32), x).to(frame_tokens.dtype)
