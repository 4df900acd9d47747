"""The built-in default for the README's main command: a tiny generated checkpoint and a
generated sample video, written once into a cache folder. Random weights: the answer is noise,
but every stage of the real pipeline runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path(os.path.expanduser("~")) / ".cache" / "slowfast_trt" / "demo"
DEMO_QUESTION = "What is happening in this video?"


def ensure_demo_assets(root: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint directory, video path), created on first use."""
    from .fixtures.sample_video import write_sample_video
    from .fixtures.tiny_checkpoint import write_tiny_checkpoint

    root = Path(root) if root is not None else DEFAULT_ROOT
    ckpt, video = root / "tiny-slowfast-ckpt", root / "sample.mp4"
    if not (ckpt / "config.json").is_file():
        write_tiny_checkpoint(ckpt)
    if not video.is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_sample_video(video, num_frames=48)
    return ckpt, video
