"""Frames from memory: every accepted form becomes the same uint8 (T, H, W, 3) frames; every
rejected one is one FrameError; the GPU resize path (run here on CPU tensors) stays within a few
levels of PIL's; generate() answers the same for each form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from slowfast_trt.frames import FrameError, _crop_on_gpu, as_frames, crop_frames, is_frame_input
from slowfast_trt.preprocess import resize_and_center_crop
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.video import load_video


@pytest.fixture(scope="module")
def clip(sample_video):
    return load_video(sample_video, 3).frames  # (3, 64, 96, 3)


def _same(got, want: np.ndarray) -> None:
    array = got.cpu().numpy() if isinstance(got, torch.Tensor) else got
    assert array.dtype == np.uint8 and array.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(array, want)


def test_every_accepted_form(clip):
    one = clip[1]
    forms = {
        "numpy clip": (clip, clip),
        "numpy frame": (one, one[None]),
        "strided view": (clip[::2], clip[::2]),
        "negative strides": (clip[:, ::-1], clip[:, ::-1]),
        "torch clip": (torch.from_numpy(clip), clip),
        "permuted tensor": (torch.from_numpy(clip.transpose(0, 3, 1, 2).copy()).permute(0, 2, 3, 1), clip),
        "dlpack": (np.ascontiguousarray(clip), clip),  # numpy has __dlpack__ too; the ndarray path wins
        "PIL image": (Image.fromarray(one), one[None]),
        "PIL RGBA": (Image.fromarray(one).convert("RGBA"), one[None]),
        "list of PIL": ([Image.fromarray(f) for f in clip], clip),
        "list of arrays": (list(clip), clip),
    }
    for name, (given, want) in forms.items():
        assert is_frame_input(given), name
        _same(as_frames(given), want)

    class Capsule:  # only the DLPack protocol (as CuPy or JAX arrays offer it)
        def __init__(self, tensor):
            self._tensor = tensor

        def __dlpack__(self, **kwargs):
            return self._tensor.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._tensor.__dlpack_device__()

    _same(as_frames(Capsule(torch.from_numpy(clip))), clip)
    assert as_frames(one, single=True).shape == (1, 64, 96, 3)


def test_every_rejected_form_is_one_clear_error(clip):
    cases = [
        (clip.astype(np.float32), "uint8 RGB, got dtype float32.*scale to 0..255"),
        (clip.astype(np.int16), "uint8 RGB, got dtype int16"),
        (clip[0, :, :, 0], r"shape \(T, H, W, 3\) or \(H, W, 3\), got \(64, 96\)"),
        (clip[None], r"got \(1, 3, 64, 96, 3\)"),
        (np.concatenate([clip, clip[..., :1]], axis=-1), "drop the alpha channel"),
        (clip.transpose(0, 3, 1, 2), "looks channels first"),
        (clip[:0], "must not be empty"),
        (np.empty((2, 4), dtype=object), "object array"),
        ([clip[0], clip[0][:32]], "one size"),
        ([], "empty list"),
        (torch.from_numpy(clip).to_sparse(), "sparse|strided"),
        ("not an array".encode(), "expected a path, a uint8"),
        (3.5, "expected a path, a uint8"),
    ]
    for given, match in cases:
        with pytest.raises(FrameError, match=match):
            as_frames(given)
    with pytest.raises(FrameError, match="expected one frame"):
        as_frames(clip, single=True)
    assert issubclass(FrameError, ValueError)


def test_gpu_resize_is_close_to_pil(clip):
    """The CUDA path's arithmetic (torch antialiased bicubic), run on CPU tensors: a few levels
    from PIL's 8-bit fixed-point bicubic, and the same crop geometry."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 700, 500, 3), dtype=np.uint8)  # the worst case: every pixel an edge
    # measured: sample 9x upscale mean 0.012 max 9, 768x512 downscale max 2, noise mean 0.27 max 22
    for frames, mean, worst in ((clip, 0.05, 12), (np.repeat(np.repeat(clip, 8, 1), 8, 2), 0.01, 3), (noise, 0.4, 32)):
        want = resize_and_center_crop(frames, 576).astype(np.int16)
        got = _crop_on_gpu(torch.from_numpy(frames), 576).numpy().astype(np.int16)
        assert got.shape == want.shape
        diff = np.abs(got - want)
        assert diff.mean() < mean and diff.max() <= worst, (frames.shape, diff.mean(), diff.max())
    # Host frames, and any frames for a CPU engine, take PIL's path exactly.
    _same(crop_frames(torch.from_numpy(clip), 576, "cpu"), resize_and_center_crop(clip, 576))


def test_generate_takes_every_form(tiny_exports, clip):
    rt = SlowFastRuntime.load(tiny_exports("tiny_ckpt"), threads=1)
    want = rt.generate(clip[:2], "What is happening?", max_new_tokens=4).token_ids
    for form in (torch.from_numpy(clip[:2]), [Image.fromarray(f) for f in clip[:2]], list(clip[:2])):
        assert rt.generate(form, "What is happening?", max_new_tokens=4).token_ids == want
    with pytest.raises(ValueError, match="video frames: frames must be uint8"):
        rt.generate(clip[:2].astype(np.float32), "What is happening?")
    rt.close()
