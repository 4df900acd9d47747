"""load_video / load_image on real files written by slowfast_trt.fixtures.sample_video."""

from __future__ import annotations

import av
import numpy as np
import pytest

from slowfast_trt.fixtures.sample_video import (
    sample_frame,
    write_audio_only_file,
    write_corrupt_video,
    write_empty_video,
    write_sample_image,
    write_sample_video,
    write_unconvertible_video,
    write_video_without_first_keyframe,
)
from slowfast_trt.video import VideoError, VideoFrames, load_image, load_video

NUM_FRAMES, FPS, WIDTH, HEIGHT = 40, 8, 96, 64
# libx264 reorders frames (B-frames), mpeg4 does not: run the sampling tests on both.
CODECS = [c for c in ("libx264", "mpeg4") if c in av.codecs_available]
needs_x264 = pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV built without libx264")


def decode_all(path) -> np.ndarray:
    """Every frame of the file, decoded with plain PyAV: the reference for indexing."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module", params=CODECS)
def video(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "clip.mp4"
    write_sample_video(path, NUM_FRAMES, WIDTH, HEIGHT, FPS, codec=request.param)
    return str(path), decode_all(path)


def test_sample_video_frames_all_differ(video):
    _, reference = video
    assert reference.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    flat = reference.reshape(NUM_FRAMES, -1).astype(np.int16)
    for i in range(NUM_FRAMES):
        assert np.all(np.abs(flat[i] - np.delete(flat, i, axis=0)).max(axis=1) > 8)


@pytest.mark.parametrize("num_frames", [1, 7, NUM_FRAMES, 64])
def test_uniform_matches_upstream_linspace(video, num_frames):
    path, reference = video
    out = load_video(path, num_frames)
    expected = np.linspace(0, NUM_FRAMES - 1, num_frames, dtype=int)
    assert isinstance(out, VideoFrames)
    np.testing.assert_array_equal(out.indices, expected)
    np.testing.assert_array_equal(out.frames, reference[expected])
    np.testing.assert_allclose(out.timestamps_s, expected / FPS, atol=1e-9)
    assert out.frames.dtype == np.uint8 and out.frames.shape == (num_frames, HEIGHT, WIDTH, 3)
    assert (out.total_frames, out.avg_fps, out.source) == (NUM_FRAMES, FPS, path)
    if num_frames > NUM_FRAMES:
        assert len(set(out.indices.tolist())) == NUM_FRAMES  # padded by repeating frames


def test_uniform_within_time_range(video):
    path, reference = video
    out = load_video(path, 6, start_s=1.0, end_s=3.0)  # frames 8..23 (t = 1.0 .. 2.875)
    expected = 8 + np.linspace(0, 15, 6, dtype=int)
    np.testing.assert_array_equal(out.indices, expected)
    np.testing.assert_array_equal(out.frames, reference[expected])
    assert out.timestamps_s.min() >= 1.0 and out.timestamps_s.max() < 3.0
    assert out.total_frames == NUM_FRAMES


@pytest.mark.parametrize(
    "num_frames, fps, expected",
    [
        (10, 2.0, np.arange(0, 40, 4)),  # exactly one frame every 0.5 s
        (4, 2.0, np.arange(0, 40, 4)[[0, 3, 6, 9]]),  # 10 picks thinned by linspace
        (8, 1.0, np.array([0, 0, 8, 8, 16, 16, 24, 32])),  # 5 picks padded by repeats
        (40, 8.0, np.arange(40)),  # the video's own rate: every frame
    ],
)
def test_fps_sampling(video, num_frames, fps, expected):
    path, reference = video
    out = load_video(path, num_frames, sampling="fps", fps=fps)
    np.testing.assert_array_equal(out.indices, expected)
    np.testing.assert_array_equal(out.frames, reference[expected])


def test_fps_sampling_picks_frame_on_screen(video):
    path, _ = video
    out = load_video(path, 15, sampling="fps", fps=3.0)  # targets k/3 s, k = 0..14
    frame_starts = np.arange(NUM_FRAMES) / FPS
    targets = np.arange(15) / 3.0
    expected = np.searchsorted(frame_starts, targets + 1e-6, side="right") - 1
    np.testing.assert_array_equal(out.indices, expected)
    assert np.all(out.timestamps_s <= targets + 1e-6) and np.all(targets - out.timestamps_s < 1 / FPS)


def test_fps_sampling_within_time_range(video):
    path, reference = video
    out = load_video(path, 4, sampling="fps", fps=2.0, start_s=1.0, end_s=3.0)
    np.testing.assert_array_equal(out.indices, [8, 12, 16, 20])
    np.testing.assert_array_equal(out.frames, reference[[8, 12, 16, 20]])
    # A range starting between frames begins at the first frame inside it.
    out = load_video(path, 3, sampling="fps", fps=1.0, start_s=1.06, end_s=4.0)
    np.testing.assert_array_equal(out.indices, [9, 16, 24])
    assert out.timestamps_s.min() >= 1.06 and out.timestamps_s.max() < 4.0


def test_display_rotation_is_applied(tmp_path):
    plain = load_video(write_sample_video(tmp_path / "plain.mp4", 4), 4).frames
    for degrees in (90, -90, 180):
        rotated = load_video(write_sample_video(tmp_path / f"rot{degrees}.mp4", 4, rotation=degrees), 4)
        np.testing.assert_array_equal(rotated.frames, np.rot90(plain, degrees // 90, axes=(1, 2)))


@needs_x264
def test_frame_count_follows_decoder_not_packets(tmp_path):
    # 11 packets, but the 3 before the second keyframe have no reference and decode to nothing.
    path = write_video_without_first_keyframe(tmp_path / "headless.mp4", num_frames=12, keyframe_interval=4)
    reference = decode_all(path)
    assert len(reference) == 8
    out = load_video(path, 5)
    expected = np.linspace(0, 7, 5, dtype=int)
    assert out.total_frames == 8
    np.testing.assert_array_equal(out.indices, expected)
    np.testing.assert_array_equal(out.frames, reference[expected])
    np.testing.assert_allclose(out.timestamps_s, expected / FPS, atol=1e-9)
    out = load_video(path, 2, start_s=0.0, end_s=0.3)  # stops decoding early, then re-checks
    np.testing.assert_array_equal(out.indices, [0, 2])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_load_image(tmp_path, suffix):
    path = write_sample_image(tmp_path / f"image{suffix}", width=50, height=30)
    out = load_image(path)
    assert out.frames.shape == (1, 30, 50, 3) and out.frames.dtype == np.uint8
    assert (out.total_frames, out.source, out.indices.tolist(), out.timestamps_s.tolist()) == (1, path, [0], [0.0])
    diff = np.abs(out.frames[0].astype(int) - sample_frame(0, 50, 30))
    if suffix == ".png":
        assert diff.max() == 0
    else:  # JPEG is lossy, worst at the square's sharp edges
        assert diff.mean() < 8


def _bad_files(tmp_path):
    """(path, kwargs, words in the message) for every error case of load_video."""
    good = write_sample_video(tmp_path / "good.mp4", 16)
    cases = [
        (str(tmp_path / "missing.mp4"), {}, "no such file"),
        (write_corrupt_video(tmp_path / "corrupt.mp4"), {}, "corrupt"),
        (write_audio_only_file(tmp_path / "audio.wav"), {}, "no video stream"),
        (write_empty_video(tmp_path / "empty.avi"), {}, "no frames"),
        (write_unconvertible_video(tmp_path / "bgr4.nut"), {}, "unsupported pixel format"),
        (good, {"num_frames": 0}, "num_frames"),
        (good, {"sampling": "random"}, "sampling"),
        (good, {"sampling": "fps"}, "fps"),
        (good, {"fps": 2.0}, "fps"),
        (good, {"start_s": 1.5, "end_s": 1.0}, "empty time range"),
        (good, {"start_s": -1.0}, "start_s"),
        (good, {"start_s": 2.0}, "outside the video"),
        (good, {"end_s": 2.5}, "outside the video"),
        (good, {"start_s": 1.01, "end_s": 1.1}, "contains no frame"),
    ]
    if "libx264" in av.codecs_available:
        no_keyframe = write_video_without_first_keyframe(tmp_path / "nokey.mp4", 4, keyframe_interval=4)
        cases.append((no_keyframe, {}, "decodes to a frame"))
    return cases


def test_errors_name_the_file(tmp_path):
    for path, kwargs, words in _bad_files(tmp_path):
        kwargs = {"num_frames": 4, **kwargs}
        with pytest.raises(VideoError) as info:
            load_video(path, **kwargs)
        message = str(info.value)
        assert isinstance(info.value, ValueError)
        assert message.startswith(path) and words in message and "\n" not in message, (kwargs, message)


def test_image_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.png")
    corrupt = write_corrupt_video(tmp_path / "corrupt.png")
    for path, words in ((missing, "no such file"), (corrupt, "unreadable")):
        with pytest.raises(VideoError, match=words) as info:
            load_image(path)
        assert str(info.value).startswith(path)
