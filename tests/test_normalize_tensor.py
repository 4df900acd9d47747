"""``normalize_tensor`` (float32, on the tower's device) is bit-identical to ``normalize`` (numpy,
float64 rescale), and the vision tower gives the same bits for any memory format of its input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slowfast_trt.preprocess import normalize, normalize_tensor


def test_bit_identical_to_numpy_for_every_value_and_channels_last():
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    rng = np.random.default_rng(0)
    for frames in (every, rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)):
        got = normalize_tensor(torch.from_numpy(frames))
        assert got.dtype == torch.float32 and got.shape == (frames.shape[0], 3, *frames.shape[1:3])
        assert got.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(got.numpy(), normalize(frames))


@pytest.mark.parametrize("bad", [np.zeros((1, 4, 4, 3), np.uint8), torch.zeros(1, 4, 4, 3), torch.zeros(4, 4, 3, dtype=torch.uint8)])
def test_rejects_what_is_not_a_uint8_frame_tensor(bad):
    with pytest.raises(ValueError, match="normalize_tensor"):
        normalize_tensor(bad)


def test_tower_same_bits_for_either_memory_format(reference):
    pixels = torch.randn(2, 3, 576, 576, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first = reference.model.vision(pixels)
        second = reference.model.vision(pixels.contiguous(memory_format=torch.channels_last))
    assert torch.equal(first, second)
