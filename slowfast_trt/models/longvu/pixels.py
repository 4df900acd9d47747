"""Host preprocessing of LongVU frames (``mm_datautils.py`` ``process_images``, list branch).

Per frame and per tower, in upstream's order (SigLIP, then DINOv2): ``expand2square`` with the
tower processor's mean colour as ``int(mean * 255)`` (SigLIP (127, 127, 127), DINOv2
(123, 116, 103); quirk 6), the image pasted at ((H - W) // 2, 0) or (0, (W - H) // 2); then
Pillow's ``resize((S, S))`` with its default filter, bicubic: S = 384 for SigLIP (its processor has
no ``crop_size``, upstream falls back to ``size["height"]``, quirk 5) and 378 for DINOv2. The
processors' own resize and center crop are identities at that size; rescale and normalise happen
inside the towers (:mod:`slowfast_trt.models.longvu.towers`), so what leaves the host is uint8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from slowfast_trt.models.longvu.config import DINO_PIXELS, SIGLIP_PIXELS
from slowfast_trt.models.longvu.towers import DINO_MEAN, SIGLIP_MEAN

__all__ = ["DINO_PAD", "SIGLIP_PAD", "tower_pixels"]

SIGLIP_PAD = tuple(int(x * 255) for x in SIGLIP_MEAN)
DINO_PAD = tuple(int(x * 255) for x in DINO_MEAN)


def _square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


def _frame(frame: np.ndarray, colour, size: int) -> np.ndarray:
    return np.asarray(_square(Image.fromarray(frame), colour).resize((size, size)), dtype=np.uint8)


def tower_pixels(frames: np.ndarray, tower: str) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) -> uint8 (T, S, S, 3) for ``tower`` ("siglip" or "dino")."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    colour, size = (SIGLIP_PAD, SIGLIP_PIXELS) if tower == "siglip" else (DINO_PAD, DINO_PIXELS)
    return np.stack([_frame(f, colour, size) for f in frames])
