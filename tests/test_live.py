"""Live sources for real: a file paced by its timestamps, and a live MPEG-TS stream that ffmpeg
serves over HTTP on 127.0.0.1, read with PyAV through ``open_stream(source=URL)`` while
questions are asked (needs the ``ffmpeg`` program: ``apt-get install -y ffmpeg``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from slowfast_trt.fixtures.sample_video import write_sample_video
from slowfast_trt.live import LiveSource, SourceError
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

FFMPEG = shutil.which("ffmpeg")
QUESTION = "What is happening in this video?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """A TCP socket listens on 127.0.0.1:port (read from /proc, so no connection is made)."""
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                return True
    return False


def _paced(frames, after_s: float = 1.5) -> tuple[float, float]:
    """(wall-clock span, stream-time span) of the frames after the first ``after_s`` s (which
    the stream's probe may have buffered)."""
    late = [f for f in frames if f[0] >= after_s]
    return late[-1][1] - late[0][1], late[-1][0] - late[0][0]


def test_a_file_is_paced_by_its_timestamps(tmp_path):
    clip = write_sample_video(tmp_path / "clip.mp4", num_frames=24, fps=8)  # 3 s
    source = LiveSource(clip, sample_fps=4, queue_size=64)
    items = []
    while source.ended is None or source.stats()["waiting"]:
        item = source.get(timeout=0.1)
        if item is not None:
            items.append((item[1], item[2]))
    assert [round(ts, 3) for ts, _ in items] == [i / 4 for i in range(12)]  # 4 of the 8 fps
    wall, stream = items[-1][1] - items[0][1], items[-1][0] - items[0][0]
    assert 0.9 * stream <= wall <= stream + 1.0, (wall, stream)
    assert source.ended == "end of stream" and source.stats()["sampled_out"] == 12
    source.close()


def test_sources_that_cannot_be_opened(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        LiveSource(tmp_path / "none.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(SourceError, match="text.mp4: cannot open the stream"):
        LiveSource(tmp_path / "text.mp4")
    url = f"http://127.0.0.1:{_free_port()}/live.ts"  # nothing listens there
    with pytest.raises(SourceError, match=f"{url}: cannot open the stream"):
        LiveSource(url, open_timeout_s=5)


@pytest.mark.slow
@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg program (.ci/run: apt-get install -y ffmpeg)")
def test_a_network_stream_is_read_live_and_answered(tmp_path, tiny_exports):
    clip = write_sample_video(tmp_path / "camera.mp4", num_frames=48, fps=8)  # 6 s of "camera"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    server = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", clip, "-c:v", "mpeg2video",
                               "-q:v", "4", "-g", "4", "-f", "mpegts", "-listen", "1", url])
    rt = SlowFastRuntime.load(tiny_exports("tiny_ckpt"), threads=1)
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            assert server.poll() is None and time.monotonic() < deadline, "ffmpeg did not start listening"
            time.sleep(0.05)
        with rt.open_stream(window=16, sample_fps=2, source=url) as stream:
            with pytest.raises(ValueError, match="reads its frames from http://127.0.0.1"):
                stream.push(b"")
            assert stream.wait_for_frames(3, timeout=30)
            live = stream.ask(QUESTION, max_new_tokens=4)  # while the source plays
            assert len(live.token_ids) == 4 and live.stream["ended"] is None and live.stream["frames_held"] >= 3
            deadline = time.monotonic() + 60
            while stream.ended is None:
                assert time.monotonic() < deadline, stream.stats()
                time.sleep(0.1)
            held = stream.frames_held()
            last = stream.ask(QUESTION, max_new_tokens=4)  # the frames stay after the end
            stats = stream.stats()
    finally:
        server.kill()
        server.wait()
        rt.close()
    assert stats["ended"] == "end of stream" and last.stream["ended"] == "end of stream"
    # 2 fps of 6 s: frames at 0, 0.5, ..., 5.5 s (any the encoder fell behind on were dropped and counted)
    times = [h.timestamp_s for h in held]
    assert set(times) <= {i / 2 for i in range(12)} and times == sorted(times)
    assert len(held) + stats["source"]["dropped"] == 12 == stats["encoded"] + stats["source"]["dropped"]
    wall, stream_time = _paced([(h.timestamp_s, h.arrived_s) for h in held])
    assert 0.8 * stream_time <= wall <= stream_time + 2.0, (wall, stream_time)  # real time, not a burst
    assert stats["source"]["decoded"] >= 40 and len(last.token_ids) == 4 and last.stream["frames_held"] == len(held)
