"""Video and image input: decode a file with PyAV and pick the frames the model sees.

Upstream (``gradio_demo.py`` ``load_video``) reads videos with decord::

    vr = VideoReader(path)
    idx = np.linspace(0, len(vr) - 1, T, dtype=int)
    frames = vr.get_batch(idx).asnumpy()          # (T, H, W, 3) uint8 RGB

``load_video(path, T)`` returns the same frames with PyAV. What "frame ``i``" means follows
decord: the video stream's packets are counted by demuxing (not from the container's frame
count, which can be missing or wrong) and ordered by presentation time, and a display
rotation stored in the file (phone videos) is applied to the pixels. Because the decoder
has the last word, the frames are then decoded once in presentation order, only the wanted
ones are converted to RGB and kept, and the decoded timestamps are checked against the
demuxed ones; if they disagree (packets that decode to no frame, say) the selection is
redone from the decoder's own list of frames, so a wrong count never goes unnoticed.

Timestamps are seconds from the presentation time of the first frame, so the first frame
is at 0.0 even in streams whose timestamps start elsewhere (MPEG-TS, edited MP4).
"""

from __future__ import annotations

import bisect
import math
import os
from pathlib import Path
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "VideoError", "VideoFrames", "is_image_path", "load_image", "load_video"]

# Files read as one image (upstream's image path: no video pooling) rather than as a video.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES

# Frame times come from exact integer PTS, but user times (start_s, 1 / fps) are floats:
# a frame within a microsecond of a boundary counts as being on it.
_EPS = 1e-6
_SAMPLINGS = ("uniform", "fps")
_MIN_SKIP = 16  # frames a keyframe jump must skip to be worth a decoder restart
_MAX_FPS = 1e6  # sample times per second: beyond any real frame rate (keeps them exact in float64)


class VideoError(ValueError):
    """A video or image file that cannot give the requested frames; the message names the file."""


@dataclass(frozen=True)
class VideoFrames:
    """Frames sampled from one video (or one image), ready for ``preprocess``.

    Attributes:
        frames: uint8 RGB, shape (T, H, W, 3), display orientation.
        indices: int64 (T,), index of each frame among the video's frames in presentation
            order; repeated when the video has fewer frames than requested.
        timestamps_s: float64 (T,), presentation time of each frame in seconds from the
            first frame.
        total_frames: number of frames in the whole video (1 for an image).
        avg_fps: the stream's average frame rate; when the container states none,
            ``(total_frames - 1) / (last - first timestamp)``; 0.0 for an image.
        source: the path the frames were read from.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps_s: np.ndarray
    total_frames: int
    avg_fps: float
    source: str


@dataclass(frozen=True)
class _Stream:
    """What the demux pass learns about the video stream."""

    pts: list  # presentation timestamps in stream time_base, one per frame, sorted if known
    time_base: Fraction | None
    avg_fps: float
    # Seek points: (presentation index, DTS) of every keyframe packet, in index order; empty
    # when unknown (no timestamps, duplicate PTS) or after the selection was redone from
    # the decoder's own frame list.
    keyframes: tuple[tuple[int, int], ...] = ()


def load_video(
    path: str | os.PathLike,
    num_frames: int,
    *,
    sampling: str = "uniform",
    fps: float | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    seek: bool = True,
) -> VideoFrames:
    """Decode ``num_frames`` RGB frames from the video at ``path``.

    The time range ``[start_s, end_s)`` (seconds from the first frame; defaults: the first
    frame and the end of the last frame) selects the candidate frames, those whose
    presentation time lies in it. Then:

    * ``sampling="uniform"`` (upstream's rule): with ``m`` candidates, candidate number
      ``np.linspace(0, m - 1, num_frames, dtype=int)``. Without a range this is exactly
      upstream's ``np.linspace(0, len(vr) - 1, T, dtype=int)``; when ``m < num_frames``
      frames repeat.
    * ``sampling="fps"``: one frame every ``1 / fps`` seconds: for each target time
      ``start + k / fps`` inside the range, the candidate on screen at that time (the last
      one starting at or before it; the first candidate when the range starts between
      frames). Those ``p`` picks are then reduced or padded to exactly ``num_frames`` by
      the same rule, pick number ``np.linspace(0, p - 1, num_frames, dtype=int)``:
      evenly thinned when ``p > num_frames``, frames repeated when ``p < num_frames``.

    Cost: one demux pass (no decoding) and one decode pass that stops after the range;
    only the chosen frames are converted to RGB and kept in memory. With ``seek`` (default)
    the decode pass jumps to the keyframe before a chosen frame whenever that skips frames
    (a range far into a long video, sparse frames of a long video) and decodes forward from
    there; the frames chosen are the same as decoding from the start (the selection is made
    on the demuxed list first), and every frame decoded after a jump must be the next one of
    that list, else the file is decoded from the start as without ``seek``.

    Raises ``VideoError`` (a ``ValueError``) naming the file for a missing, unreadable or
    corrupt file, no video stream, no decodable frame, a bad argument, a time range that
    is empty or outside the video, or a pixel format FFmpeg cannot convert to RGB.
    """
    path = _existing_file(path)
    _check_request(path, num_frames, sampling, fps, start_s, end_s)
    stream = _demux(path)
    if not stream.pts:
        raise VideoError(f"{path}: the video stream has no frames")
    for _ in range(2):
        times = _seconds(path, stream)
        avg_fps = stream.avg_fps or _measured_rate(times)
        chosen, stop = _select(path, times, avg_fps, num_frames, sampling, fps, start_s, end_s)
        wanted = frozenset(chosen.tolist())
        decoded = _decode_seeking(path, stream, wanted, stop) if seek else None
        if decoded is not None:
            break
        decoded, decoded_pts = _decode(path, wanted, stop)
        reached = len(decoded_pts) == (len(stream.pts) if stop is None else stop + 1)
        if reached and decoded_pts == stream.pts[: len(decoded_pts)]:
            break
        # The demuxer's packets are not the decoder's frames (packets that decode to
        # nothing, or timestamps rewritten by the decoder): redo the selection on the
        # decoder's own frame list.
        full_pts = decoded_pts if stop is None else _decode(path, frozenset(), None)[1]
        if not full_pts:
            raise VideoError(f"{path}: none of the {len(stream.pts)} video packets decodes to a frame")
        stream = _Stream(pts=full_pts, time_base=stream.time_base, avg_fps=stream.avg_fps)
    else:
        raise VideoError(f"{path}: the decoder returned different frames on two passes over the file")
    return VideoFrames(
        frames=_stack(path, [decoded[i] for i in chosen]),
        indices=chosen.astype(np.int64),
        timestamps_s=times[chosen],
        total_frames=len(stream.pts),
        avg_fps=avg_fps,
        source=path,
    )


def load_image(path: str | os.PathLike) -> VideoFrames:
    """Read one image as a one-frame ``VideoFrames`` (PIL, converted to RGB).

    Like upstream (``Image.open(path).convert("RGB")``) the EXIF orientation is not applied.
    Unlike upstream, a 16-bit grayscale image is scaled to 8 bits (``round(v / 257)``), where
    PIL's ``convert("RGB")`` clips every value above 255 to white; 32-bit integer and float
    images (no defined range) are refused with a ``VideoError`` naming the mode.
    """
    path = _existing_file(path)
    try:
        with Image.open(path) as image:
            rgb = _image_rgb(path, image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, VideoError):
            raise
        raise VideoError(f"{path}: unreadable or corrupt image file ({exc})") from exc
    return VideoFrames(
        frames=rgb[None].copy(),
        indices=np.zeros(1, dtype=np.int64),
        timestamps_s=np.zeros(1, dtype=np.float64),
        total_frames=1,
        avg_fps=0.0,
        source=path,
    )


# PIL modes of 16-bit grayscale images (PNG, TIFF); "I" is how older Pillow opens 16-bit PNGs.
_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _image_rgb(path: str, image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an open PIL image (module docstring of :func:`load_image`)."""
    mode = image.mode
    if mode in _GRAY16_MODES or (mode == "I" and image.format == "PNG"):
        gray = np.asarray(image).astype(np.float64)
        if gray.size and (gray.min() < 0 or gray.max() > 65535):
            raise VideoError(f"{path}: 16-bit image holds values outside 0..65535")
        gray = np.rint(gray / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        kind = "32-bit float" if mode.startswith("F") else "32-bit integer"
        raise VideoError(
            f"{path}: {kind} image (PIL mode {mode!r}) has no defined brightness range; convert it to 8-bit or "
            "16-bit RGB or grayscale first"
        )
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _existing_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video or image file")
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes)")
    return path


def _check_request(path, num_frames, sampling, fps, start_s, end_s) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise VideoError(f"{path}: num_frames must be an integer >= 1, got {num_frames!r}")
    if sampling not in _SAMPLINGS:
        raise VideoError(f"{path}: sampling must be one of {_SAMPLINGS}, got {sampling!r}")
    if sampling == "fps" and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                              or not 0 < fps <= _MAX_FPS):
        raise VideoError(f"{path}: sampling='fps' needs 0 < fps <= {_MAX_FPS:g}, got fps={fps!r}")
    if sampling == "uniform" and fps is not None:
        raise VideoError(f"{path}: fps={fps!r} is only used with sampling='fps', got sampling='uniform'")
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise VideoError(f"{path}: {name} must be a finite number >= 0, got {value!r}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise VideoError(f"{path}: empty time range, end_s={end_s} must be > start_s={start_s}")


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: unreadable or corrupt video file ({exc})") from exc


def _video_stream(path: str, container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        raise VideoError(f"{path}: no video stream (streams: {kinds})")
    # decord picks the stream with av_find_best_stream; PyAV's best() calls the same.
    return container.streams.best("video")


def _demux(path: str) -> _Stream:
    """Read every packet of the video stream (no decoding) to count frames and get their PTS."""
    with _open(path) as container:
        stream = _video_stream(path, container)
        try:
            # PyAV ends the demux with an empty flush packet, which is no frame.
            packets = [(p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size > 0]
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: corrupt video container ({exc})") from exc
        avg_fps = float(stream.average_rate) if stream.average_rate else 0.0
        time_base = stream.time_base
    pts = [p for p, _, _ in packets]
    if not all(p is not None for p in pts):
        return _Stream(pts=pts, time_base=time_base, avg_fps=avg_fps)
    pts.sort()  # decode order -> presentation order, as decord sorts its frame index
    index_of = {p: i for i, p in enumerate(pts)}
    keyframes = ()
    # Seeking trusts the demuxed list for the frames it skips; a stream that does not start
    # with a keyframe has packets that decode to nothing, so it is always decoded from the start.
    if packets and len(index_of) == len(pts) and packets[0][2]:
        keyframes = tuple(sorted((index_of[p], d) for p, d, key in packets if key and d is not None))
    return _Stream(pts=pts, time_base=time_base, avg_fps=avg_fps, keyframes=keyframes)


def _seconds(path: str, stream: _Stream) -> np.ndarray:
    """Presentation time of every frame, in seconds from the first frame."""
    pts = stream.pts
    if stream.time_base and all(p is not None for p in pts):
        num, den = stream.time_base.numerator, stream.time_base.denominator
        ticks = np.asarray(pts, dtype=np.int64) - int(pts[0])
        if den < 2**53 and int(np.abs(ticks).max(initial=0)) * num < 2**53:
            # Both integers are exact in float64, so the IEEE quotient is the correctly rounded
            # value of the exact rational: the same float as Fraction arithmetic, vectorised.
            return (ticks * num).astype(np.float64) / float(den)
        return np.array([float((p - pts[0]) * stream.time_base) for p in pts], dtype=np.float64)
    if stream.avg_fps > 0:
        # Streams without timestamps (some raw elementary streams): assume a constant rate.
        return np.arange(len(pts), dtype=np.float64) / stream.avg_fps
    raise VideoError(f"{path}: the frames have no timestamps and the stream has no frame rate")


def _measured_rate(times: np.ndarray) -> float:
    """Frames per second implied by the timestamps, for containers that state no rate."""
    span = float(times[-1] - times[0])
    return (len(times) - 1) / span if span > 0 else 0.0


def _select(path, times, avg_fps, num_frames, sampling, fps, start_s, end_s) -> tuple[np.ndarray, int | None]:
    """Return the chosen frame indices and the last frame the decoder must reach (None: all)."""
    timed = sampling == "fps" or start_s is not None or end_s is not None
    if timed and np.any(np.diff(times) < 0):
        raise VideoError(f"{path}: frame timestamps are not increasing, so time-based sampling is undefined")
    # A frame lasts until the next one starts; the last one lasts one average frame period.
    duration = float(times[-1]) + (1.0 / avg_fps if avg_fps > 0 else 0.0)
    lo, hi = _frames_in_range(path, times, duration, start_s, end_s)
    if sampling == "uniform":
        picks = np.arange(lo, hi + 1)
        chosen = picks[np.linspace(0, len(picks) - 1, num_frames, dtype=int)]
    else:
        start = 0.0 if start_s is None else float(start_s)
        end = duration if end_s is None else float(end_s)
        count = max(1, math.ceil((end - start) * fps - _EPS))
        # Pick number np.linspace(0, count - 1, num_frames) of the targets start + k / fps,
        # computed for those k only (a high fps makes ``count`` huge).
        keep = np.linspace(0, count - 1, num_frames, dtype=int)
        targets = start + keep.astype(np.float64) / fps
        chosen = np.clip(np.searchsorted(times, targets + _EPS, side="right") - 1, lo, hi)
    # Decode one frame past the range so that its timestamp is checked too.
    stop = hi + 1 if hi + 1 < len(times) else None
    return chosen, stop


def _frames_in_range(path, times, duration, start_s, end_s) -> tuple[int, int]:
    """First and last index of the frames starting in [start_s, end_s) (all frames by default)."""
    if (end_s is not None and end_s > duration + _EPS) or (start_s is not None and start_s > times[-1] + _EPS):
        raise VideoError(
            f"{path}: time range start_s={start_s}, end_s={end_s} is outside the video, which lasts {duration:.6g} s "
            f"(last frame at {times[-1]:.6g} s)"
        )
    inside = times >= (start_s or 0.0) - _EPS
    if end_s is not None:
        inside &= times < end_s - _EPS
    in_range = np.flatnonzero(inside)
    if in_range.size == 0:
        raise VideoError(f"{path}: time range start_s={start_s}, end_s={end_s} contains no frame")
    return int(in_range[0]), int(in_range[-1])


def _decode(path: str, wanted: frozenset, stop: int | None) -> tuple[dict[int, np.ndarray], list]:
    """Decode frames in presentation order up to index ``stop`` (None: all).

    Returns RGB arrays for the ``wanted`` indices only, so memory stays at
    ``len(wanted)`` frames, and the PTS of every decoded frame.
    """
    rgb, pts = {}, []
    with _open(path) as container:
        stream = _video_stream(path, container)
        stream.thread_type = "AUTO"  # frame and slice threads; output order is unchanged
        try:
            for frame in container.decode(stream):
                index = len(pts)
                pts.append(frame.pts)
                if index in wanted:
                    rgb[index] = _to_rgb(path, frame)
                if stop is not None and index >= stop:
                    break
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: corrupt video data after {len(pts)} decoded frames ({exc})") from exc
    return rgb, pts


def _seek_plan(keyframes: tuple[tuple[int, int], ...], wanted: list[int]) -> list[tuple[int, int] | None]:
    """Per wanted index (ascending): the keyframe (index, DTS) to jump to first, or None to
    decode on from where the decoder is. Only jumps that skip ``_MIN_SKIP`` frames are made
    (a jump restarts the decoder, which costs about as much as decoding a few frames)."""
    starts = [k for k, _ in keyframes]
    plan, position = [], 0  # position: the index the decoder outputs next
    for index in wanted:
        at = bisect.bisect_right(starts, index) - 1
        jump = keyframes[at] if at >= 0 and keyframes[at][0] >= position + _MIN_SKIP else None
        plan.append(jump)
        position = index + 1
    return plan


def _decode_seeking(path: str, stream: _Stream, wanted: frozenset, stop: int | None) -> dict[int, np.ndarray] | None:
    """RGB of the ``wanted`` indices, jumping to keyframes (see :func:`load_video`); None when
    no jump would skip a frame or when a decoded frame is not the one the demuxed list expects."""
    order = sorted(wanted)
    plan = _seek_plan(stream.keyframes, order)
    if not any(plan):
        return None
    index_of = {p: i for i, p in enumerate(stream.pts)}
    last = len(stream.pts) - 1 if stop is None else stop
    rgb = {}
    with _open(path) as container:
        video = _video_stream(path, container)
        video.thread_type = "AUTO"
        frames, expected = container.decode(video), 0
        try:
            for index, jump in zip(order, plan):
                if jump is not None:
                    container.seek(jump[1], backward=True, any_frame=False, stream=video)
                    video.codec_context.flush_buffers()
                    frames, expected = container.decode(video), jump[0]
                if not _decode_to(path, frames, index_of, expected, index, wanted, rgb):
                    return None
                expected = index + 1
            # On to the frame after the range (or the end), so its timestamp is checked too.
            if last >= expected and not _decode_to(path, frames, index_of, expected, last, wanted, rgb):
                return None
        except av.error.FFmpegError:
            return None  # decoded from the start instead, which reports what is corrupt
    return rgb


def _decode_to(path, frames, index_of, expected, until, wanted, rgb) -> bool:
    """Decode up to index ``until``; frames before ``expected`` (what a jump lands on before its
    keyframe) are skipped, and from ``expected`` on each frame must be the next index."""
    for frame in frames:
        index = index_of.get(frame.pts)
        if index is None:
            return False
        if index < expected:
            continue
        if index != expected:
            return False
        if index in wanted:
            rgb[index] = _to_rgb(path, frame)
        if index >= until:
            return True
        expected += 1
    return False


def _to_rgb(path: str, frame: av.VideoFrame) -> np.ndarray:
    try:
        image = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(
            f"{path}: unsupported pixel format {frame.format.name!r}, FFmpeg cannot convert it to RGB ({exc})"
        ) from exc
    rotation = frame.rotation  # counter-clockwise degrees from the display matrix
    if rotation % 90:
        raise VideoError(f"{path}: display rotation {rotation} degrees is not a multiple of 90")
    # decord turns the picture upright (transpose filters); np.rot90 turns counter-clockwise.
    return np.ascontiguousarray(np.rot90(image, k=(rotation // 90) % 4)) if rotation else image


def _stack(path: str, frames: list[np.ndarray]) -> np.ndarray:
    shapes = sorted({f.shape for f in frames})
    if len(shapes) > 1:
        raise VideoError(f"{path}: the frame size changes within the video ({shapes[0]} and {shapes[-1]})")
    return np.stack(frames)
