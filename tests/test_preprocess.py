"""preprocess.py against transformers' CLIPImageProcessor configured exactly as upstream."""

from __future__ import annotations

import numpy as np
import pytest
from transformers.image_transforms import center_crop as hf_center_crop
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import ChannelDimension

from slowfast_trt.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    center_crop,
    normalize,
    preprocess_frames,
    resize_and_center_crop,
    shortest_edge_size,
)

try:  # transformers >= 5 names the PIL processor (upstream's, from 4.x) explicitly
    from transformers import CLIPImageProcessorPil as SlowCLIPImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor as SlowCLIPImageProcessor


def upstream_processor(**overrides):
    """convnext_encoder.py: the 256 config, then size=576 (int) and a 576 x 576 crop."""
    config = dict(
        crop_size=256,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=256,
    )
    processor = SlowCLIPImageProcessor(**{**config, **overrides})
    processor.size = 576
    processor.crop_size = {"height": 576, "width": 576}
    return processor


def make_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Noise over a smooth gradient: both sharp and smooth content for the bicubic filter."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    smooth = (ys * 255 // max(h - 1, 1) + xs * 128 // max(w - 1, 1))[None, :, :, None]
    noise = rng.integers(-40, 41, size=(t, h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


# Landscape and portrait, odd sizes, smaller than 576 (upscaled), larger (downscaled), square.
SHAPES = [(2, 64, 96), (2, 97, 61), (1, 300, 451), (1, 700, 1000), (1, 1001, 577), (1, 576, 576)]


@pytest.mark.parametrize("t, h, w", SHAPES)
def test_matches_clip_image_processor(t, h, w):
    frames = make_frames(t, h, w)
    expected = upstream_processor().preprocess(frames, return_tensors="np")["pixel_values"]
    ours = preprocess_frames(frames)
    assert ours.dtype == np.float32 and ours.shape == (t, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.abs(ours - expected).max() <= 1e-5


@pytest.mark.parametrize("t, h, w", SHAPES[:3])
def test_uint8_crop_then_normalize_is_the_same_numbers(t, h, w):
    # transformers resizes the uint8 PIL image and rescales after, so the geometric part
    # alone (no rescale, no normalize) is exactly our uint8 crop ...
    frames = make_frames(t, h, w, seed=1)
    geometric = upstream_processor(do_rescale=False, do_normalize=False).preprocess(frames, return_tensors="np")
    crop = resize_and_center_crop(frames)
    assert crop.dtype == np.uint8 and crop.shape == (t, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(geometric["pixel_values"], crop.transpose(0, 3, 1, 2))
    # ... and normalising that uint8 crop gives the processor's full output bit for bit.
    full = upstream_processor().preprocess(frames, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(normalize(crop), full)


def test_normalize_formula():
    frames = make_frames(2, 5, 7)
    x = frames.astype(np.float64) / 255
    expected = ((x - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(normalize(frames), expected, atol=1e-6)


@pytest.mark.parametrize("h, w", [(64, 96), (97, 61), (1, 1000), (576, 575), (3, 3)])
def test_shortest_edge_size_matches_transformers(h, w):
    image = np.zeros((h, w, 3), dtype=np.uint8)
    hf = get_resize_output_image_size(image, size=576, default_to_square=False, input_data_format="channels_last")
    assert shortest_edge_size(h, w, 576) == tuple(hf)


@pytest.mark.parametrize(
    "h, w, crop_h, crop_w",
    [(10, 12, 4, 4), (11, 13, 4, 5), (5, 7, 8, 9), (4, 9, 7, 3), (9, 4, 3, 7), (3, 3, 3, 3)],
)
def test_center_crop_matches_transformers_including_padding(h, w, crop_h, crop_w):
    frames = make_frames(2, h, w, seed=2)
    ours = center_crop(frames, crop_h, crop_w)
    for i in range(2):
        hf = hf_center_crop(frames[i], (crop_h, crop_w), input_data_format=ChannelDimension.LAST)
        np.testing.assert_array_equal(ours[i], hf)
    assert ours.shape == (2, crop_h, crop_w, 3)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((1, 8, 8, 3), dtype=np.float32), "uint8"),
        ([[[[0, 0, 0]]]], "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), "(T, H, W, 3)"),
        (np.zeros((1, 8, 8, 4), dtype=np.uint8), "(T, H, W, 3)"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "(T, H, W, 3)"),
    ],
)
def test_rejects_bad_frames(bad, words):
    for fn in (resize_and_center_crop, normalize, preprocess_frames):
        with pytest.raises(ValueError, match=r"frames must") as info:
            fn(bad)
        assert str(info.value).startswith(fn.__name__) and words in str(info.value)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        resize_and_center_crop(make_frames(1, 8, 8), size)
