"""Live streams: which frames each policy holds, and questions on a window equal ``generate`` over
exactly the held frames as a clip (fp32 greedy, torch and ONNX Runtime), before and after
eviction; follow-ups, sampling and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slowfast_trt.frames import FrameError
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.runtime.stream import NoFramesError, StreamClosedError
from slowfast_trt.runtime.stream_window import FrameWindow
from slowfast_trt.video import load_video

QUESTION = "What is happening in this video?"
GREEDY = dict(max_new_tokens=6)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_window_policies_hold_what_the_docs_say(size):
    recent, uniform = FrameWindow(size, "recent"), FrameWindow(size, "uniform")
    for n in range(1, 150):
        for window in (recent, uniform):
            window.admit(window.plan(), n * 0.1)
            slots = [h.slot for h in window.held]
            assert len(set(slots)) == len(slots) and all(0 <= s < size for s in slots)
        assert [h.index for h in recent.held] == list(range(max(0, n - size), n))
        interval = 1
        while math.ceil(n / interval) > size:  # the smallest power of two that fits
            interval *= 2
        assert [h.index for h in uniform.held] == list(range(0, n, interval)) and uniform.interval == interval
        assert len(uniform) >= min(n, math.ceil(size / 2))
    with pytest.raises(ValueError, match="policy must be one of recent, uniform"):
        FrameWindow(4, "newest")
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        FrameWindow(0)


@pytest.fixture(scope="module")
def clip(sample_video):
    return load_video(sample_video, 40).frames  # every frame of the 5 s sample, 8 fps


@pytest.fixture(scope="module")
def runtimes(tiny_ckpt, tiny_exports):
    """backend -> runtime of the tiny checkpoint (ONNX Runtime: the shared default export)."""
    loaded = {"onnxruntime": SlowFastRuntime.load(tiny_exports("tiny_ckpt"), threads=1),
              "torch": SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu")}
    yield loaded
    for rt in loaded.values():
        rt.close()


def _check_window(rt, stream, clip, expected: list[int]):
    """The held frames are ``expected`` and a question equals ``generate`` over them as a clip."""
    held = [h.index for h in stream.frames_held()]
    assert held == expected
    got = stream.ask(QUESTION, **GREEDY)
    want = rt.generate(clip[held], QUESTION, **GREEDY)
    assert got.token_ids == want.token_ids and len(got.token_ids) >= 3, held
    assert (got.frames, got.slow_tokens, got.fast_tokens) == (want.frames, want.slow_tokens, want.fast_tokens)
    assert "vision_ms" not in got.timings_ms and got.timings_ms["window_ms"] > 0  # no vision work at ask time
    assert got.stream["frames_held"] == len(held) and got.stream["last"]["index"] == held[-1]
    return got


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_recent_window_equals_the_clip_before_and_after_eviction(backend, runtimes, clip):
    rt = runtimes[backend]
    with rt.open_stream(window=6, policy="recent") as stream:
        for i in range(6):
            assert stream.push(clip[i], timestamp=i / 8)
        first = _check_window(rt, stream, clip, list(range(6)))  # holds them all
        followup = stream.ask("What happens next?", max_new_tokens=3)
        assert followup.reused_rows >= first.prompt_tokens  # no new frame: the cache is reused
        for i in range(6, 9):
            stream.push(clip[i], timestamp=i / 8)
        stream.reset()
        _check_window(rt, stream, clip, list(range(3, 9)))  # frames 0..2 evicted
        assert stream.stats()["evicted"] == 3 and stream.stats()["encoded"] == 9


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_uniform_window_decimates_and_equals_the_clip(backend, runtimes, clip):
    rt = runtimes[backend]
    with rt.open_stream(window=4, policy="uniform") as stream:
        kept = [stream.push(clip[i], timestamp=i / 8) for i in range(11)]
        # 0 1 2 3 | 4: interval 2 (1, 3 evicted) | 6 | 8: interval 4 (2, 6 evicted) | 9, 10 never encoded
        assert [i for i, k in enumerate(kept) if k] == [0, 1, 2, 3, 4, 6, 8]
        _check_window(rt, stream, clip, [0, 4, 8])
        assert stream.stats()["not_kept"] == 4 and stream.stats()["interval"] == 4


def test_one_frame_is_answered_as_an_image(runtimes, clip):
    rt = runtimes["onnxruntime"]
    with rt.open_stream(window=1) as stream:
        stream.push(clip[3])
        stream.push(clip[5])
        got = _check_window(rt, stream, clip[[3, 5]], [1])  # frame 1 of the stream: clip[5]
    assert got.slow_tokens == got.fast_tokens == 324  # upstream's single image: no video pooling


def test_sampling_followups_and_bad_input(runtimes, clip):
    rt = runtimes["onnxruntime"]
    with rt.open_stream(window=8, sample_fps=2) as stream:
        with pytest.raises(NoFramesError, match="no frame has arrived yet"):
            stream.ask(QUESTION)
        kept = [stream.push(clip[i], timestamp=i / 8) for i in range(9)]  # 8 fps pushed, 2 fps kept
        assert [i for i, k in enumerate(kept) if k] == [0, 4, 8]
        assert [h.timestamp_s for h in stream.frames_held()] == [0.0, 0.5, 1.0]
        for bad, match in ((clip[0].astype(np.float32), "uint8"), (clip[:2], "one frame"), (clip[0][..., :2], "3 channels"),
                           (clip[0].transpose(2, 0, 1), "channels first")):
            with pytest.raises(FrameError, match=match):
                stream.push(bad, timestamp=2.0)
        with pytest.raises(ValueError, match="before the previous frame"):
            stream.push(clip[0], timestamp=0.2)
        # A frame of another size: resized and cropped like every frame.
        big = np.ascontiguousarray(np.repeat(np.repeat(clip[10], 2, axis=0), 3, axis=1))
        assert stream.push(big, timestamp=1.5)
        assert len(stream.ask(QUESTION, max_new_tokens=3).token_ids) == 3  # still usable
    with pytest.raises(StreamClosedError, match="closed"):
        stream.push(clip[0])
    with pytest.raises(StreamClosedError, match="closed"):
        stream.ask(QUESTION)
    with pytest.raises(ValueError, match=r"window=65, but the engines .* serve 1\.\.64 frames"):
        rt.open_stream(window=65)
    with pytest.raises(ValueError, match="policy must be one of"):
        rt.open_stream(window=4, policy="latest")
    with pytest.raises(ValueError, match="sample_fps must be a number > 0"):
        rt.open_stream(window=4, sample_fps=0)
