"""Frame preprocessing for the ConvNeXt-576 vision tower, identical to upstream's.

Upstream builds ``CLIPImageProcessor(size=256, crop_size=256, resample=3, ...)`` and then
sets ``size = 576`` (an int, so "shortest edge 576") and ``crop_size = {576, 576}``
(``llava/model/multimodal_encoder/convnext_encoder.py``). Per frame that is:

1. resize with PIL bicubic so that the shortest edge is 576, the other edge
   ``int(576 * long / short)`` (transformers' ``get_resize_output_image_size``);
2. center crop 576 x 576 (transformers' ``center_crop``);
3. ``x / 255``, then ``(x - CLIP_MEAN) / CLIP_STD`` per channel, channels first.

Steps 1-2 (``resize_and_center_crop``) stay on uint8 and step 3 (``normalize``) is separate
and public because exported engines take the uint8 crop and fold the normalisation into
their graph. transformers also resizes a uint8 PIL image and rescales only afterwards, so
the split gives the same numbers, bit for bit, as ``CLIPImageProcessor`` (the slow, PIL
one; transformers >= 5 calls it ``CLIPImageProcessorPil``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_SIZE",
    "center_crop",
    "normalize",
    "normalize_tensor",
    "preprocess_frames",
    "resize_and_center_crop",
    "shortest_edge_size",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 576

# transformers' default rescale_factor, applied in float64 and then cast to float32.
_RESCALE = 1 / 255


def _check_frames(name: str, frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        kind = frames.dtype if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"{name}: frames must be a numpy uint8 array, got {kind}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(
            f"{name}: frames must have shape (T, H, W, 3) with T, H, W >= 1 (RGB, channels last; "
            f"use frames[None] for one image), got {frames.shape}"
        )


def _check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{name}: size must be an integer >= 1, got {size!r}")


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of resizing the shortest edge to ``size``, as transformers does.

    The long edge is ``int(size * long / short)`` (truncated, not rounded).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop (T, H, W, C) frames to (T, height, width, C) like transformers' ``center_crop``.

    The window starts at ``(H - height) // 2``. When a frame is smaller than the crop it is
    first zero-padded to ``max(H, height)`` x ``max(W, width)`` with ``ceil`` of half the
    missing pixels before it, and the window is shifted by that padding, which is what
    transformers does (it matters only when the crop is larger than the resized frame,
    never with upstream's equal resize and crop sizes).
    """
    if frames.ndim != 4:
        raise ValueError(f"center_crop: frames must have shape (T, H, W, C), got {frames.shape}")
    _check_size("center_crop", height)
    _check_size("center_crop", width)
    orig_h, orig_w = frames.shape[1:3]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return frames[:, top : top + height, left : left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    top_pad, left_pad = math.ceil((new_h - orig_h) / 2), math.ceil((new_w - orig_w) / 2)
    padded = np.zeros((frames.shape[0], new_h, new_w, frames.shape[3]), dtype=frames.dtype)
    padded[:, top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = frames
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def resize_and_center_crop(frames: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize uint8 RGB frames (T, H, W, 3) so the shortest edge is ``size`` and center crop.

    PIL bicubic resampling, as ``CLIPImageProcessor(resample=3)``. Returns uint8
    (T, size, size, 3), a new array.
    """
    _check_frames("resize_and_center_crop", frames)
    _check_size("resize_and_center_crop", size)
    if frames.shape[1:3] == (size, size):
        # PIL's resize to the frame's own size is a copy, and the crop is the whole frame:
        # frames already at the tower's size are the answer (16 frames at 576 px: 30-60 ms
        # of copies before the vision tower).
        return frames.copy()
    new_h, new_w = shortest_edge_size(frames.shape[1], frames.shape[2], size)
    out = np.empty((frames.shape[0], size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        resized = np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
        out[i] = center_crop(resized[None], size, size)[0]
    return out


def normalize(frames: np.ndarray) -> np.ndarray:
    """Map uint8 RGB frames (T, H, W, 3) to float32 (T, 3, H, W): ``(x / 255 - mean) / std``.

    The arithmetic follows transformers step by step (rescale in float64, cast to float32,
    then subtract and divide in float32), so the result is bit-identical to it.
    """
    _check_frames("normalize", frames)
    scaled = (frames.astype(np.float64) * _RESCALE).astype(np.float32)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(0, 3, 1, 2))


def normalize_tensor(frames: torch.Tensor) -> torch.Tensor:
    """:func:`normalize` in torch, on the frames' device: uint8 (T, H, W, 3) -> float32 (T, 3, H, W).

    Bit-identical to :func:`normalize`: float32 ``x / 255`` equals the float64 rescale cast to
    float32 for each of the 256 values, and the rest is the same float32 arithmetic. The result
    is a channels-last view (NHWC in memory), the layout the vision tower runs in, so neither
    the float64 intermediate of the numpy path nor a channels-first copy is made.
    """
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        kind = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"normalize_tensor: frames must be a uint8 tensor (T, H, W, 3), got {kind}")
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=frames.device)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=frames.device)
    x = frames.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.permute(0, 3, 1, 2)


def preprocess_frames(frames: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Upstream's full preprocessing: uint8 (T, H, W, 3) -> float32 (T, 3, size, size)."""
    _check_frames("preprocess_frames", frames)
    _check_size("preprocess_frames", size)
    return normalize(resize_and_center_crop(frames, size))
