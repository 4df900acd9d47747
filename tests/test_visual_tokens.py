"""Slow/fast token counts (FACTS.md table) and an independent re-derivation of the pooling rules."""

import json

import pytest
import torch

from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.visual_tokens import fast_frame_count, split_slow_fast, uses_avg_pool3d

from test_config import MANIFEST

RELEASED = json.loads(MANIFEST.read_text())
VARIANTS = {
    "frame64-s1t4": {},
    "frame96-s1t6": {"fast_token_temporal_stride": 6},
    "frame128-s2t4": {"fast_token_temporal_sampling_stride": 2},
}


def visual_config(**overrides):
    return SlowFastConfig.from_dict({**RELEASED["config"], **overrides}).visual


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("frames", [16, 32, 64, 96, 128])
def test_token_counts_match_upstream_measurements(variant, frames):
    expected = RELEASED["token_counts_released_configs"][variant][str(frames)]
    visual = visual_config(**VARIANTS[variant])
    pooled = torch.randn(frames, 81, 8)  # 18x18 grid after the 2x2 video pooling
    slow, fast = split_slow_fast(pooled, visual)
    assert slow.shape[0] == expected["slow_tokens"]
    assert fast.shape[0] == expected["fast_tokens"]
    assert fast_frame_count(frames, visual) == expected["fast_frames"]


def test_pooling_branches():
    visual = visual_config()
    assert not uses_avg_pool3d(16, visual) and not uses_avg_pool3d(32, visual)
    assert uses_avg_pool3d(64, visual) and uses_avg_pool3d(96, visual)


def test_avg_pool3d_branch_rederived():
    visual = visual_config(min_fast_frames=2, fast_token_temporal_stride=3)
    x = torch.randn(8, 9, 5)
    _, fast = split_slow_fast(x, visual)
    # 8 // 3 = 2 >= 2: windows [0,3) and [3,6); frames 6 and 7 are dropped (floor).
    expected = torch.cat([x[0:3].mean(0), x[3:6].mean(0)])
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-6)


def test_adaptive_branch_rederived():
    visual = visual_config(min_fast_frames=4, fast_token_temporal_stride=4)
    x = torch.randn(6, 9, 5)
    _, fast = split_slow_fast(x, visual)
    # 6 // 4 = 1 < 4: adaptive pooling of 6 frames to 4, bins [floor(i*6/4), ceil((i+1)*6/4)).
    bins = [(0, 2), (1, 3), (3, 5), (4, 6)]
    expected = torch.cat([x[a:b].mean(0) for a, b in bins])
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-6)


def test_sampling_and_spatial_stride_rederived():
    visual = visual_config(min_fast_frames=1, fast_token_temporal_stride=1,
                           fast_token_temporal_sampling_stride=3, fast_token_spatial_stride=3)
    x = torch.randn(7, 36, 2)
    _, fast = split_slow_fast(x, visual)
    # sample_fast_frames(7, 3, 1): 2 frames at int(i * 3.5) -> 0, 3; then 3x3 pooling of the 6x6 grid.
    grid = x[[0, 3]].reshape(2, 6, 6, 2)
    expected = grid.reshape(2, 2, 3, 2, 3, 2).mean(dim=(2, 4)).reshape(-1, 2)
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-6)


def test_image_is_not_pooled(reference):
    model = reference.model
    with torch.inference_mode():
        visual = model.encode_video(torch.randn(1, 3, 576, 576))
    assert visual.slow.shape == (324, 64) and visual.fast.shape == (324, 64)
    torch.testing.assert_close(visual.slow, visual.fast)


def test_video_vision_path_shapes(reference):
    model = reference.model
    pixels = torch.randn(2, 3, 576, 576)
    with torch.inference_mode():
        features = model.vision(pixels)
        visual = model.encode_video(pixels)
    assert features.shape == (2, 324, 48)
    assert visual.slow.shape == (2 * 81, 64)
    # 2 frames < min_fast_frames 16: adaptive pooling keeps both frames.
    assert visual.fast.shape == (2 * 81, 64)
