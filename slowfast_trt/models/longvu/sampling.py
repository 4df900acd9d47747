"""LongVU's frame sampling (the model card / README), with PyAV through :mod:`slowfast_trt.video`.

Upstream::

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    fps = float(vr.get_avg_fps())
    frame_indices = np.array([i for i in range(0, len(vr), round(fps))])
    video = [vr[i].asnumpy() for i in frame_indices]

One frame per ``round(fps)`` frames (Python's ``round``, half to even: 2.5 -> 2, 3.5 -> 4,
29.97 -> 30; quirk 7), from the first frame to the end, no cap. A stream whose rate rounds to 0
(below 0.5 fps) makes upstream's ``range`` fail; here it is a ``VideoError`` saying so.

Frame ``i`` is the i-th frame in presentation order, as in :func:`slowfast_trt.video.load_video`.
The frames are read with its ``fps`` sampling at ``avg_fps / step`` frames per second, which
lands on indices 0, step, 2*step, ... when the timestamps are regular; the indices are checked,
and a stream whose timestamps are not (variable frame rate) is read again taking every frame,
from which the indices are picked (exact, at the memory cost of the whole clip).
"""

from __future__ import annotations

import os

import numpy as np

from slowfast_trt.video import VideoError, VideoFrames, load_video

__all__ = ["frame_step", "sample_video"]


def frame_step(avg_fps: float, path: str = "video") -> int:
    """``round(avg_fps)``: one sampled frame per that many frames."""
    step = round(avg_fps)
    if step < 1:
        raise VideoError(
            f"{path}: average frame rate {avg_fps:g} fps rounds to {step}; LongVU samples one frame every "
            "round(fps) frames and needs at least 0.5 fps"
        )
    return step


def _pick(frames: VideoFrames, indices: list[int]) -> VideoFrames:
    return VideoFrames(
        frames=frames.frames[indices], indices=np.asarray(indices, dtype=np.int64),
        timestamps_s=frames.timestamps_s[indices], total_frames=frames.total_frames,
        avg_fps=frames.avg_fps, source=frames.source,
    )


def sample_video(path: str | os.PathLike) -> VideoFrames:
    """Frames ``range(0, total_frames, round(avg_fps))`` of the video at ``path`` (uint8 RGB)."""
    probe = load_video(path, 1)
    total, avg_fps = probe.total_frames, probe.avg_fps
    step = frame_step(avg_fps, str(path))
    wanted = list(range(0, total, step))
    if len(wanted) == 1:
        return probe if int(probe.indices[0]) == 0 else _pick(load_video(path, total), [0])
    frames = load_video(path, len(wanted), sampling="fps", fps=avg_fps / step)
    if frames.indices.tolist() == wanted:
        return frames
    everything = load_video(path, total)  # irregular timestamps: index the frames themselves
    return _pick(everything, wanted)
