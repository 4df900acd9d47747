"""Issue 11, video input: directories, empty files, 16-bit images, and seeking in long videos
(same frames as decoding from the start, at the cost of the range)."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest
from PIL import Image

from slowfast_trt import video as V
from slowfast_trt.fixtures.long_video import write_long_video
from slowfast_trt.fixtures.sample_video import write_sample_video, write_video_without_first_keyframe
from slowfast_trt.video import VideoError, load_image, load_video

needs_x264 = pytest.mark.skipif("libx264" not in av.codecs_available, reason="needs libx264")


def test_directory_is_named_as_a_directory(tmp_path):
    for load in (lambda p: load_video(p, 4), load_image):
        with pytest.raises(VideoError, match="is a directory"):
            load(tmp_path)


def test_zero_byte_file_is_empty_not_corrupt(tmp_path):
    for name, load in (("e.mp4", lambda p: load_video(p, 4)), ("e.png", load_image)):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(VideoError, match=r"empty \(0 bytes\)"):
            load(tmp_path / name)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    frames = load_image(tmp_path / "g16.png").frames
    assert frames.shape == (1, 4, 4, 3)
    assert frames[0, 0, :, 0].tolist() == [0, 1, 128, 255]
    assert (frames[..., 0] == frames[..., 2]).all()
    # Upstream's convert("RGB") clips: 257, 32768 and 65535 would all be 255.
    assert (frames == 255).mean() < 0.5


def test_8bit_images_are_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    assert np.array_equal(load_image(tmp_path / "c.png").frames[0], rgb)
    assert np.array_equal(load_image(tmp_path / "g.png").frames[0], np.repeat(rgb[..., :1], 3, axis=-1))


def test_float_image_is_refused_with_its_mode(tmp_path):
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(VideoError, match="f.tif: 32-bit float image"):
        load_image(tmp_path / "f.tif")


# -- seeking ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    # 5 minutes at 10 fps, a keyframe every 50 frames: 3000 frames, written in about a second.
    return write_long_video(tmp_path_factory.mktemp("long") / "long.mp4", seconds=300, fps=10)


def _count_seeks(monkeypatch):
    calls = []
    original = av.container.InputContainer.seek

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "seek", counting)
    return calls


REQUESTS = [  # frames, options, whether a keyframe jump is expected
    (16, dict(start_s=250.0, end_s=260.0), True),
    (64, dict(start_s=120.3, end_s=180.0), True),
    (8, dict(start_s=295.0), True),  # to the end of the video
    (64, dict(), True),  # sparse frames of the whole video: jumps between them
    (5, dict(sampling="fps", fps=0.5, start_s=30.0, end_s=200.0), True),
    (12, dict(start_s=0.0, end_s=2.0), False),  # nothing to skip
    (300, dict(), False),  # every 10th frame: a jump would skip too little
]


@pytest.mark.parametrize("num_frames,options,jumps", REQUESTS)
def test_seeking_chooses_and_decodes_the_same_frames(long_video, num_frames, options, jumps, monkeypatch):
    plain = load_video(long_video, num_frames, seek=False, **options)
    seeks = _count_seeks(monkeypatch)
    sought = load_video(long_video, num_frames, **options)
    assert np.array_equal(sought.indices, plain.indices)
    assert np.array_equal(sought.timestamps_s, plain.timestamps_s)
    assert np.array_equal(sought.frames, plain.frames)
    assert (sought.total_frames, sought.avg_fps) == (plain.total_frames, plain.avg_fps)
    assert bool(seeks) == jumps


@pytest.mark.parametrize("codec", sorted({"mpeg4", "libx264"} & set(av.codecs_available)))
def test_seeking_matches_on_sample_videos(tmp_path, codec):
    # The fixture videos of the parity tests: B-frames (x264 veryfast), default GOPs.
    path = write_sample_video(tmp_path / f"s_{codec}.mp4", num_frames=120, codec=codec)
    for options in (dict(start_s=10.0), dict(start_s=5.0, end_s=9.0), dict()):
        a, b = load_video(path, 6, **options), load_video(path, 6, seek=False, **options)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.indices, b.indices)


@needs_x264
def test_seeking_falls_back_when_packets_are_not_frames(tmp_path):
    # Packets that decode to nothing: the decoder's own frame list decides, seek or not.
    path = write_video_without_first_keyframe(tmp_path / "nokey.mp4", num_frames=120, keyframe_interval=20)
    for options in (dict(start_s=9.0), dict()):
        a, b = load_video(path, 4, **options), load_video(path, 4, seek=False, **options)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.indices, b.indices)
        assert a.total_frames == b.total_frames == 100


@pytest.mark.slow
def test_range_of_a_30_minute_video_costs_the_range(tmp_path):
    """--start 1700 --end 1750 in a 30-minute video: seeking decodes the range, not 28 minutes."""
    long = write_long_video(tmp_path / "30min.mp4", seconds=1800, fps=10)
    short = write_long_video(tmp_path / "50s.mp4", seconds=50, fps=10)

    def best(fn):
        times = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    sought = best(lambda: load_video(long, 64, start_s=1700, end_s=1750))
    plain = best(lambda: load_video(long, 64, start_s=1700, end_s=1750, seek=False))
    fifty = best(lambda: load_video(short, 64))
    demux = best(lambda: V._demux(long))
    print(f"30 min, range 1700-1750 s: seek {sought:.3f} s, from the start {plain:.3f} s; "
          f"50 s video {fifty:.3f} s; demux pass of the 30 min file {demux:.3f} s")
    assert sought < plain / 2
    # What remains above the 50 s video's cost is the demux pass over every packet (frame count).
    assert sought < 2 * (fifty + demux) + 1.0
