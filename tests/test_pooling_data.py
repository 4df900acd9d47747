"""Pooling as data: the host-built matrices the graphs take equal the model's own pooling
(avg_pool2d, sampling, avg_pool3d, adaptive pooling) for every frame count, in float32."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slowfast_trt.models.slowfast.visual_tokens import (
    encode_visual_tokens,
    fast_frame_count,
    grid_pool_matrix,
    pool_fast,
    pool_grid,
    pooling_matrices,
    project_frames,
    video_grid_pool,
)
from test_visual_tokens import VARIANTS, visual_config

MAX_FRAMES = 128  # past the 96-frame checkpoints' training frames
ATOL = 1e-6


def _variants():
    released = [visual_config(**overrides) for overrides in VARIANTS.values()]
    base = released[0]
    return released + [
        dataclasses.replace(base, min_fast_frames=4),  # avg_pool3d from 16 frames on
        dataclasses.replace(base, fast_temporal_sampling_stride=2, min_fast_frames=6),
        dataclasses.replace(base, fast_spatial_stride=2, fast_temporal_stride=6, min_fast_frames=5),
        dataclasses.replace(base, fast_temporal_stride=1),
    ]


@pytest.mark.parametrize("index", range(7))
def test_matrices_equal_the_models_pooling_for_every_frame_count(index):
    visual = _variants()[index]
    gen = torch.Generator().manual_seed(index)
    projector = torch.nn.Identity()
    for frames in range(1, MAX_FRAMES + 1):
        features = torch.randn(frames, 324, 4, generator=gen)  # float32, the 18x18 grid of 576 px
        slow, fast = encode_visual_tokens(features, projector, visual)
        pooling = pooling_matrices(frames, visual, 324)
        tokens = project_frames(features, projector, pooling.grid_pool)
        got = pool_fast(tokens, pooling.temporal_pool, pooling.spatial_pool)
        assert tokens.dtype == got.dtype == torch.float32
        torch.testing.assert_close(tokens.reshape(-1, 4), slow, rtol=0, atol=ATOL, msg=f"{visual} T={frames} slow")
        torch.testing.assert_close(got.reshape(-1, 4), fast, rtol=0, atol=ATOL, msg=f"{visual} T={frames} fast")
        assert pooling.temporal_pool.shape == (fast_frame_count(frames, visual), frames)
        assert pooling.fast_tokens == fast.shape[0]


def test_matrices_are_averages():
    visual = visual_config()
    for frames in (1, 2, 15, 16, 17, 63, 64, 65, 96):
        pooling = pooling_matrices(frames, visual, 324)
        for matrix in (pooling.grid_pool, pooling.temporal_pool, pooling.spatial_pool):
            assert matrix.dtype == torch.float32 and (matrix >= 0).all()
            torch.testing.assert_close(matrix.sum(1), torch.ones(matrix.shape[0]))
    assert pooling_matrices(1, visual, 324).grid_pool.shape == (324, 324)  # an image: no video pooling
    assert torch.equal(video_grid_pool(visual, 324), pooling_matrices(2, visual, 324).grid_pool)
    x = torch.randn(3, 81, 5)
    torch.testing.assert_close(torch.matmul(grid_pool_matrix(9, 2), x), pool_grid(x, 2), rtol=0, atol=ATOL)  # 9 // 2: floor
    with pytest.raises(ValueError, match="frames must be an integer >= 1"):
        pooling_matrices(0, visual, 324)


def test_the_exported_fast_pool_graph_for_every_frame_count(tiny_exports):
    """fast_pool.onnx of the default export, in ONNX Runtime, for every T it serves (1..64)."""
    import onnxruntime as ort

    from slowfast_trt.models.slowfast.config import SlowFastConfig
    from slowfast_trt.models.slowfast.visual_tokens import split_slow_fast

    folder = tiny_exports("tiny_ckpt_pool3d")  # avg_pool3d from 16 frames on, adaptive below
    visual = SlowFastConfig.from_file(folder / "config.json").visual
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "fast_pool.onnx"), options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(7)
    for frames in range(1, 65):
        tokens = torch.randn(frames, 324 if frames == 1 else 81, 64, generator=gen)
        pooling = pooling_matrices(frames, visual, 324)
        (got,) = session.run(None, {"frame_tokens": tokens.numpy(), "temporal_pool": pooling.temporal_pool.numpy(),
                                    "spatial_pool": pooling.spatial_pool.numpy()})
        _, want = split_slow_fast(tokens, visual)
        torch.testing.assert_close(torch.from_numpy(got).reshape(-1, 64), want, rtol=0, atol=ATOL, msg=f"T={frames}")
