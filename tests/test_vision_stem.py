"""The vision tower's fast paths equal the reference's normalise-then-convolve tower.

* ``ConvNeXtTower(frames, normalise=...)``: uint8 frames with the pixel normalisation folded into the
  stem convolution (torch backend and the exported vision graph);
* the fused CPU MLP (oneDNN linear with bias and GELU in one pass) against ``F.linear`` + GELU;
* the streamed export (weights given as stubs while tracing, bytes written afterwards): the
  folded stem must come from the stem's real weights, not from the stubs.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from slowfast_trt.models.slowfast import convnext
from slowfast_trt.preprocess import CLIP_MEAN, CLIP_STD, normalize


def _frames(count=2, size=576, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _close(actual, expected, rel=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(actual - expected).max() <= rel * scale, np.abs(actual - expected).max() / scale


def test_folded_stem_equals_normalising_first(reference):
    tower, frames = reference.model.vision, _frames()
    with torch.inference_mode():
        want = tower(torch.from_numpy(normalize(frames)))
        got = tower(torch.from_numpy(frames), normalise=(CLIP_MEAN, CLIP_STD))
    _close(got, want)


def test_fold_matches_the_formula_on_a_patch():
    stem = torch.nn.Conv2d(3, 5, 4, stride=4)
    patch = torch.randint(0, 256, (1, 3, 4, 4)).float()
    mean, std = torch.tensor(CLIP_MEAN)[None, :, None, None], torch.tensor(CLIP_STD)[None, :, None, None]
    weight, bias = convnext.fold_pixel_normalisation(stem, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        want = stem((patch / 255 - mean) / std)
        got = torch.nn.functional.conv2d(patch, weight, bias, stride=4)
    _close(got, want, rel=1e-6)


@pytest.mark.skipif(convnext._LINEAR_POINTWISE is None, reason="torch built without oneDNN")
def test_fused_mlp_equals_unfused(monkeypatch):
    mlp = convnext.Mlp(16, 64)
    x = torch.randn(4, 9, 9, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = mlp(x)
        monkeypatch.setattr(convnext, "_LINEAR_POINTWISE", None)
        plain = mlp(x)
    _close(fused, plain, rel=1e-6)


def test_fused_path_not_taken_with_grad_or_off_cpu_dtypes():
    x = torch.randn(2, 16)
    with torch.enable_grad():
        assert not convnext._fused_cpu_linear(x)
    with torch.inference_mode():
        assert not convnext._fused_cpu_linear(x.double())
        assert convnext._fused_cpu_linear(x) == (convnext._LINEAR_POINTWISE is not None)


def test_streamed_export_vision_equals_reference(tiny_exports, reference):
    export = tiny_exports("tiny_ckpt")
    session = ort.InferenceSession(str(export / "vision.onnx"), providers=["CPUExecutionProvider"])
    frames = _frames(3, seed=1)
    got = session.run(None, {"frames": frames})[0]
    with torch.inference_mode():
        want = reference.model.vision(torch.from_numpy(normalize(frames)))
    _close(got, want)
