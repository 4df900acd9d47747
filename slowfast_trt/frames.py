"""Frames from memory: every in-memory form the runtime accepts, checked once, as uint8 RGB.

Accepted (one frame or T frames, RGB, channels last, uint8):

| form                                   | becomes                                              |
|----------------------------------------|------------------------------------------------------|
| numpy array (T, H, W, 3) or (H, W, 3)   | the array (a copy only when it is not C-contiguous)  |
| torch tensor on CPU or CUDA            | the tensor, on its device (CUDA frames stay there)   |
| any object with ``__dlpack__``          | a torch tensor sharing its memory (CuPy, JAX, ...)   |
| ``PIL.Image.Image`` or a list of them   | numpy, converted to RGB (a list: same size each)     |
| a list / tuple of numpy frames         | numpy, stacked (same size each)                      |
| :class:`slowfast_trt.video.VideoFrames` | its ``frames``                                       |

Anything else (float or int16 pixels, rank 2 or 5, 1 or 4 channels, channels first, a tensor on
a device other than CPU or CUDA, a sparse or quantized tensor) is one :class:`FrameError`
(a ``ValueError``) saying what was given and what to pass instead. Strided views (every other
frame, a crop, a permuted tensor) are fine: they are copied into a dense array.

:func:`crop_frames` then resizes and center-crops to the vision tower's size on the device the
engines run on: host frames with PIL bicubic (:func:`slowfast_trt.preprocess.resize_and_center_crop`,
bit-identical to upstream's processor), CUDA frames on the GPU with torch's antialiased bicubic
(PIL's kernel, a = -0.5, in float32 without PIL's 8-bit rounding between the two passes:
measured against PIL, a mean difference of 0.01 intensity levels and at most 2 on a 768x512
frame scaled down, at most 9 on a 96x64 one scaled up 9x, and 0.27 / 22 on pure noise, see
``tests/test_frames.py``). Every frame is resized on its own, so
frames of different sizes (a stream whose resolution changes) are all cropped the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slowfast_trt.preprocess import resize_and_center_crop, shortest_edge_size

__all__ = ["FrameError", "as_frames", "crop_frames", "frame_count", "is_frame_input"]


class FrameError(ValueError):
    """An in-memory frame or clip that is not uint8 RGB (T, H, W, 3) / (H, W, 3)."""


def _describe(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    dtype = getattr(obj, "dtype", None)
    if shape is not None:
        return f"{type(obj).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return type(obj).__name__


def is_frame_input(obj: Any) -> bool:
    """True for the in-memory forms of the module table (not paths, not None)."""
    from PIL import Image

    from slowfast_trt.video import VideoFrames

    if isinstance(obj, (np.ndarray, torch.Tensor, Image.Image, VideoFrames)) or hasattr(obj, "__dlpack__"):
        return True
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(
        isinstance(x, (np.ndarray, Image.Image, torch.Tensor)) for x in obj)


def _from_list(items) -> np.ndarray | torch.Tensor:
    frames = [as_frames(x, single=True) for x in items]
    if any(isinstance(f, torch.Tensor) for f in frames):
        frames = [f if isinstance(f, torch.Tensor) else torch.from_numpy(f) for f in frames]
        devices = {f.device for f in frames}
        if len(devices) > 1:
            raise FrameError(f"frames of one clip must be on one device, got {sorted(map(str, devices))}")
    sizes = sorted({tuple(f.shape) for f in frames})
    if len(sizes) > 1:
        raise FrameError(f"frames of one clip must have one size, got {sizes[0]} and {sizes[-1]} "
                         "(push them to a stream one at a time, or resize them first)")
    if isinstance(frames[0], torch.Tensor):
        return torch.cat(frames)
    return np.concatenate(frames)


def _check_layout(shape: tuple, dtype_name: str, what: str) -> None:
    if dtype_name != "uint8":
        hint = " (scale to 0..255 and convert, e.g. (x * 255).round().astype(np.uint8))" if "float" in dtype_name else ""
        raise FrameError(f"{what}: frames must be uint8 RGB, got dtype {dtype_name}{hint}")
    if len(shape) not in (3, 4):
        raise FrameError(f"{what}: frames must have shape (T, H, W, 3) or (H, W, 3), got {shape}")
    if shape[-1] != 3:
        first = shape[-3] if len(shape) >= 3 else None
        hint = ("; this looks channels first: permute to channels last" if first in (1, 3, 4) else
                "; drop the alpha channel: x[..., :3]" if shape[-1] == 4 else "")
        raise FrameError(f"{what}: frames must be RGB with 3 channels last, got shape {shape}{hint}")
    if 0 in shape:
        raise FrameError(f"{what}: frames must not be empty, got shape {shape}")


def _from_tensor(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise FrameError(f"{what}: a {tensor.layout} / quantized tensor cannot hold frames; pass a dense uint8 tensor")
    if tensor.device.type not in ("cpu", "cuda"):
        raise FrameError(f"{what}: frames on device {tensor.device} are not supported; move them to CPU or CUDA")
    _check_layout(tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), what)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def as_frames(obj: Any, single: bool = False) -> np.ndarray | torch.Tensor:
    """Any form of the module table -> uint8 (T, H, W, 3), numpy or a torch tensor on its device.

    ``single``: ``obj`` must be one frame ((H, W, 3), or (1, H, W, 3)), as a stream pushes.
    """
    from PIL import Image

    from slowfast_trt.video import VideoFrames

    what = "frame" if single else "video frames"
    if isinstance(obj, VideoFrames):
        obj = obj.frames
    if isinstance(obj, Image.Image):
        obj = np.asarray(obj.convert("RGB"), dtype=np.uint8)
    elif isinstance(obj, (list, tuple)):
        if single or not obj:
            raise FrameError(f"{what}: expected one frame, got a {type(obj).__name__} of {len(obj)}"
                             if single else f"{what}: an empty {type(obj).__name__}")
        return _from_list(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise FrameError(f"{what}: an object array cannot hold frames; pass uint8 pixels")
        _check_layout(obj.shape, str(obj.dtype), what)
        frames = np.ascontiguousarray(obj)
    elif isinstance(obj, torch.Tensor):
        frames = _from_tensor(obj, what)
    elif hasattr(obj, "__dlpack__"):
        try:
            tensor = torch.from_dlpack(obj)
        except (RuntimeError, TypeError, BufferError, ValueError) as exc:
            raise FrameError(f"{what}: {type(obj).__name__} cannot be read through DLPack ({exc})") from None
        frames = _from_tensor(tensor, what)
    else:
        raise FrameError(f"{what}: expected a path, a uint8 (T, H, W, 3) array or tensor, a DLPack array or PIL "
                         f"images, got {_describe(obj)}")
    if frames.ndim == 3:
        frames = frames[None]
    if single and frames.shape[0] != 1:
        raise FrameError(f"{what}: expected one frame (H, W, 3), got {frames.shape[0]} frames {tuple(frames.shape)}")
    return frames


def frame_count(frames: Any) -> int:
    """T of a clip in any accepted form (checked)."""
    return int(as_frames(frames).shape[0])


def _crop_on_gpu(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) CUDA (or CPU, for tests) tensor -> (T, size, size, 3): the shortest
    edge resized to ``size`` (antialiased bicubic), then the center crop."""
    _, height, width, _ = frames.shape
    new_h, new_w = shortest_edge_size(height, width, size)
    x = frames.permute(0, 3, 1, 2).to(torch.float32)
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, :, top:top + size, left:left + size].permute(0, 2, 3, 1).contiguous()


def crop_frames(frames: Any, size: int, device: torch.device | str) -> torch.Tensor:
    """Accepted frames -> uint8 (T, size, size, 3) on ``device`` (module docstring)."""
    frames = as_frames(frames)
    device = torch.device(device)
    if isinstance(frames, torch.Tensor) and frames.device.type == "cuda" and device.type == "cuda":
        return _crop_on_gpu(frames.to(device), size)
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else frames
    return torch.from_numpy(resize_and_center_crop(array, size)).to(device)
