"""Server parts without a model: security checks, request planning, caches, scheduler,
metrics, the CLI's argument errors, and the app's 500 and 504 paths on a fake runtime."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")

from slowfast_trt.server.cache import SessionCache, VideoCache, VideoKey, state_bytes  # noqa: E402
from slowfast_trt.server.config import ServerConfig  # noqa: E402
from slowfast_trt.server.conversation import plan_chat  # noqa: E402
from slowfast_trt.server.errors import APIError  # noqa: E402
from slowfast_trt.server.metrics import Metrics, parse_metrics  # noqa: E402
from slowfast_trt.server.scheduler import Scheduler  # noqa: E402
from slowfast_trt.server.schemas import ChatRequest, parse_json_body, parse_model  # noqa: E402
from slowfast_trt.server.security import BearerAuth, check_bind, is_loopback, media_path  # noqa: E402


# -- security -----------------------------------------------------------------------------


def test_media_path_stays_inside_media_dir(tmp_path):
    media, outside = tmp_path / "media", tmp_path / "outside"
    (media / "sub").mkdir(parents=True)
    outside.mkdir()
    (media / "sub" / "clip.mp4").write_bytes(b"x")
    (outside / "secret.mp4").write_bytes(b"x")
    os.symlink(outside / "secret.mp4", media / "escape.mp4")
    os.symlink(outside, media / "linked")
    os.symlink(media / "sub" / "clip.mp4", media / "inner.mp4")
    assert media_path(media, (media / "sub" / "clip.mp4").as_uri()) == (media / "sub" / "clip.mp4").resolve()
    assert media_path(media, "file:sub/clip.mp4") == (media / "sub" / "clip.mp4").resolve()
    assert media_path(media, "file:inner.mp4") == (media / "sub" / "clip.mp4").resolve()  # a link that stays inside
    for url in ("file:escape.mp4", "file:linked/secret.mp4", (outside / "secret.mp4").as_uri(), "file:///etc/passwd",
                "file:../outside/secret.mp4", "file:sub/../../outside/secret.mp4", "file://otherhost/clip.mp4"):
        with pytest.raises(APIError) as info:
            media_path(media, url)
        assert info.value.status == 400, url
    with pytest.raises(APIError) as info:
        media_path(media, "file:missing.mp4")
    assert info.value.status == 404
    with pytest.raises(APIError) as info:
        media_path(None, "file:sub/clip.mp4")
    assert info.value.status == 400 and "--media-dir" in info.value.message


def test_bind_needs_key_beyond_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-long-key")
    with pytest.raises(ValueError, match="--api-key"):
        check_bind("0.0.0.0", None)


def test_bearer_auth():
    auth = BearerAuth("sekrit-key-1")
    auth.check("Bearer sekrit-key-1")
    auth.check("bearer sekrit-key-1")
    for header, code in ((None, "missing_api_key"), ("", "missing_api_key"), ("Basic abc", "missing_api_key"),
                         ("Bearer wrong", "invalid_api_key"), ("Bearer sekrit-key-12", "invalid_api_key")):
        with pytest.raises(APIError) as info:
            auth.check(header)
        assert info.value.status == 401 and info.value.code == code
    BearerAuth(None).check(None)  # no key configured: open


# -- request planning ---------------------------------------------------------------------


def _request(messages, **extra):
    return parse_model(ChatRequest, {"model": "m", "messages": messages, **extra})


def _video(url="file:a.mp4", text="What?"):
    return {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url, "nframes": 4}},
                                        {"type": "text", "text": text}]}


def test_plan_chat_builds_history_and_checks_structure():
    plan = plan_chat(_request([{"role": "system", "content": "Be brief."}, _video(),
                               {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Then?"}]), False)
    assert plan.system == "Be brief." and plan.history == (("What?", "A cat."),) and plan.question == "Then?"
    assert plan.media.url == "file:a.mp4" and plan.media.nframes == 4 and plan.media.kind == "video"
    bad = {
        "two user messages in a row": [_video(), {"role": "user", "content": "x"}],
        "ends with the assistant": [_video(), {"role": "assistant", "content": "x"}],
        "video in a later message": [_video(), {"role": "assistant", "content": "x"}, _video()],
        "no video": [{"role": "user", "content": "hi"}],
        "video part without url": [{"role": "user", "content": [{"type": "video_url", "video_url": {}},
                                                                 {"type": "text", "text": "x"}]}],
        "empty question": [_video(text="  ")],
    }
    for why, messages in bad.items():
        with pytest.raises(APIError) as info:
            plan_chat(_request(messages), False)
        assert info.value.status == 400, why
    assert plan_chat(_request([{"role": "user", "content": "hi"}]), True).media is None  # --allow-text-only


def test_schema_errors_are_one_line_422():
    cases = {
        "unknown content type 'audio_url'": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {}}]}],
        "messages.0.content.0.text: Field required": [{"role": "user", "content": [{"type": "text"}]}],
        "messages.0.role": [{"role": "tool", "content": "x"}],
    }
    for expected, messages in cases.items():
        with pytest.raises(APIError) as info:
            _request(messages)
        assert info.value.status == 422 and expected in info.value.message and "\n" not in info.value.message
    with pytest.raises(APIError) as info:
        _request([_video()], max_tokens=0)
    assert info.value.status == 422 and info.value.param == "max_tokens"
    with pytest.raises(APIError) as info:
        _request([_video()], max_tokens=10**6).token_limit(128, 512)
    assert info.value.status == 422 and "512" in info.value.message
    with pytest.raises(APIError) as info:
        parse_json_body(b'{"model": ')
    assert info.value.status == 400 and "malformed JSON" in info.value.message


# -- caches -------------------------------------------------------------------------------


class _State:
    def __init__(self, rows):
        import torch

        self.fast, self.slow = torch.zeros(rows, 8), torch.zeros(1, rows, 8)
        self.slow_keys, self.slow_values = [torch.zeros(1, 2, rows, 4)], [torch.zeros(1, 2, rows, 4)]
        self.released = False

    def release(self):
        self.released = True


class _Session:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def test_video_cache_is_an_lru_bounded_in_bytes_and_closes_sessions_first():
    one = state_bytes(_State(10))
    assert one == (10 * 8 + 10 * 8 + 2 * 2 * 10 * 4) * 4
    sessions = SessionCache(8)
    cache = VideoCache(2 * one, on_evict=sessions.drop_video)
    keys = [VideoKey(str(i), "video", 4) for i in range(4)]
    states = [_State(10) for _ in keys]
    talk = _Session()
    cache.put(keys[0], states[0])
    sessions.put(("k0",), keys[0], talk)
    cache.put(keys[1], states[1])
    assert cache.get(keys[0]) is states[0]  # keys[0] is now the most recent
    cache.pin(keys[1])
    cache.put(keys[2], states[2])  # over budget: keys[1] is pinned, so keys[0] goes
    assert states[0].released and talk.closed and len(sessions) == 0
    cache.unpin(keys[1])
    assert keys[1] in cache and cache.bytes == 2 * one
    cache.put(keys[3], states[3])  # now the least recent, keys[1], goes
    assert keys[1] not in cache and states[1].released and cache.bytes == 2 * one and len(cache) == 2
    assert not cache.put(VideoKey("big", "video", 4), _State(100))  # alone over the budget: not kept
    assert (cache.hits, cache.misses) == (1, 0)


def test_session_cache_evicts_the_oldest():
    cache = SessionCache(2)
    made = [_Session() for _ in range(3)]
    for i, session in enumerate(made):
        cache.put(i, None, session)
    assert made[0].closed and not made[1].closed and cache.take(0) is None
    assert cache.take(2) is made[2] and len(cache) == 1


# -- scheduler ----------------------------------------------------------------------------


def test_scheduler_queue_full_is_429_with_retry_after_and_expired_jobs_are_skipped():
    import threading

    gate, ran = threading.Event(), []
    cancelled = []
    scheduler = Scheduler(max_queue=1, on_cancel=cancelled.append)
    try:
        scheduler.submit(lambda job: gate.wait(10), timeout_s=30)  # running
        while scheduler.running is None:
            time.sleep(0.01)
        waiting = scheduler.submit(lambda job: ran.append(1), timeout_s=0.01)  # will expire while waiting
        with pytest.raises(APIError) as info:
            scheduler.submit(lambda job: None, timeout_s=30)
        assert info.value.status == 429 and int(info.value.headers["Retry-After"]) >= 1
        time.sleep(0.05)
        gate.set()
        while not waiting.finished:
            time.sleep(0.01)
        assert ran == [] and cancelled == ["timeout"]
        kind, error = waiting.events.get_nowait()
        assert kind == "error" and error.status == 504
    finally:
        scheduler.close()


def test_scheduler_runs_in_order_and_hides_internal_errors():
    scheduler = Scheduler(max_queue=8)
    order = []
    try:
        jobs = [scheduler.submit(lambda job, i=i: order.append(i), timeout_s=30) for i in range(5)]
        broken = scheduler.submit(lambda job: 1 / 0, timeout_s=30)
        while not broken.finished:
            time.sleep(0.01)
        assert order == [0, 1, 2, 3, 4] and all(j.finished for j in jobs)
        kind, error = broken.events.get_nowait()
        assert kind == "error" and error.status == 500 and "ZeroDivision" not in error.message
        assert scheduler.call(lambda: 42) == 42
    finally:
        scheduler.close()


# -- metrics and CLI ----------------------------------------------------------------------


def test_metrics_text_format():
    m = Metrics()
    m.inc("slowfast_requests_total", route="/v1/models", status="200")
    m.observe("slowfast_time_to_first_token_seconds", 0.3)
    m.gauge("slowfast_queue_depth", "waiting", lambda: 3)
    text = m.render()
    assert "# TYPE slowfast_time_to_first_token_seconds histogram" in text
    values = parse_metrics(text)
    assert values['slowfast_requests_total{route="/v1/models",status="200"}'] == 1
    assert values['slowfast_time_to_first_token_seconds_bucket{le="0.5"}'] == 1
    assert values['slowfast_time_to_first_token_seconds_bucket{le="0.25"}'] == 0
    assert values["slowfast_queue_depth"] == 3 and values["slowfast_video_encodes_total"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--engines", "x", "--ckpt", "y"], "exactly one of --engines"),
    ([], "exactly one of --engines"),
    (["--engines", "x", "--host", "0.0.0.0"], "needs --api-key"),
    (["--engines", "x", "--max-queue", "0"], "--max-queue must be"),
    (["--engines", "x", "--media-dir", "/nonexistent/dir"], "--media-dir"),
    (["--engines", "x", "--api-key", "short"], "--api-key must be"),
    (["--engines", "x", "--port", "70000"], "--port must be"),
    (["--engines", "x", "--max-upload-mb", "0"], "--max-upload-mb must be"),
    (["--engines", "x", "--bogus"], "unrecognized arguments"),
    (["--engines", "/nonexistent/export"], "export folder not found"),
])
def test_cli_bad_arguments_print_one_error_line_and_exit_2(argv, message, capsys):
    from slowfast_trt.server.cli import main

    try:
        code = main(["--port", "0", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# -- the app on a fake runtime: 500 and 504 without a traceback ---------------------------


class _FakeStream:
    def __init__(self, delay):
        self.delay, self.result, self.closed = delay, None, False

    def __iter__(self):
        for piece in ("a", "b", "c", "d"):
            time.sleep(self.delay)
            yield piece

    def close(self):
        self.closed = True


class _FakeRuntime:
    max_seq_len, frames, default_frames, backend = 512, 4, 4, "fake"

    def __init__(self, fail=False, delay=0.0):
        self.fail, self.delay = fail, delay

    def encode_video(self, path, **kwargs):
        if self.fail:
            raise RuntimeError("boom\nTraceback (most recent call last): secret internals")
        return _State(4)

    def open_video(self, state, **kwargs):
        session = SimpleNamespace(close=lambda: None, stream=lambda q, **kw: _FakeStream(self.delay))
        return session


def test_live_streams_answer_501_without_open_stream(tmp_path):
    from fastapi.testclient import TestClient

    from slowfast_trt.server.app import create_app

    config = ServerConfig(media_dir=tmp_path, model_name="fake", data_dir=tmp_path / "data")
    with TestClient(create_app(_FakeRuntime(), config)) as client:
        for method, path in (("POST", "/v1/streams"), ("GET", "/v1/streams/stream-x"), ("DELETE", "/v1/streams/stream-x")):
            response = client.request(method, path, json={"source": "rtsp://camera", "window": 8})
            assert response.status_code == 501 and "open_stream" in response.json()["error"]["message"]
        chat = client.post("/v1/chat/completions", json={"model": "fake", "messages": [_video("stream://stream-x")]})
        assert chat.status_code == 501


@pytest.mark.parametrize("runtime, status, text", [
    (_FakeRuntime(fail=True), 500, "internal server error"),
    (_FakeRuntime(delay=0.3), 504, "time limit"),
])
def test_app_internal_error_and_timeout(tmp_path, runtime, status, text):
    from fastapi.testclient import TestClient

    from slowfast_trt.server.app import create_app

    (tmp_path / "a.mp4").write_bytes(b"not decoded by the fake")
    config = ServerConfig(media_dir=tmp_path, model_name="fake", request_timeout_s=0.5, data_dir=tmp_path / "data")
    with TestClient(create_app(runtime, config)) as client:
        response = client.post("/v1/chat/completions", json={"model": "fake", "messages": [_video("file:a.mp4")]})
        assert response.status_code == status, response.text
        message = response.json()["error"]["message"]
        assert text in message and "Traceback" not in response.text and "boom" not in response.text
        assert client.get("/health").json()["status"] == "ok"
