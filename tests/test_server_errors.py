"""Bad requests against the real server: each gets its status and a one-line OpenAI error,
and the server keeps serving. Also: a full queue (429 + Retry-After) and a client that
disconnects mid-stream (its generation stops)."""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest

from server_helpers import file_url, shared_media, shared_server, video_message

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

MB = 1024 * 1024
_HTTP = httpx.Client(timeout=60)  # one client: each new one builds a TLS context


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    return shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return shared_media(tmp_path_factory)


@pytest.fixture(scope="module")
def outside(tmp_path_factory, media):
    """A real video outside --media-dir, and a symlink to it inside."""
    from slowfast_trt.fixtures.sample_video import write_sample_video

    target = write_sample_video(tmp_path_factory.mktemp("outside") / "secret.mp4", num_frames=8)
    link = media / "escape-link.mp4"
    if not link.is_symlink():
        os.symlink(target, link)
    return target


def _chat(server, messages, key="default", **extra):
    headers = server.headers if key == "default" else ({"Authorization": f"Bearer {key}"} if key else {})
    body = {"model": server.model, "messages": messages, "max_tokens": 2, **extra}
    return _HTTP.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def _upload(server, content: bytes, name="clip.mp4", **kwargs):
    return _HTTP.post(server.url + "/v1/videos", files={"file": (name, content, "video/mp4")}, headers=server.headers,
                      timeout=60, **kwargs)


def _data_url(n_bytes: int) -> str:
    return "data:video/mp4;base64," + base64.b64encode(os.urandom(n_bytes)).decode()


CASES = {
    "malformed JSON": (lambda s, m, o: _HTTP.post(s.url + "/v1/chat/completions", content=b'{"model": "x", "mess',
                                                  headers={**s.headers, "Content-Type": "application/json"}),
                       400, "malformed JSON"),
    "unknown model": (lambda s, m, o: _HTTP.post(s.url + "/v1/chat/completions", headers=s.headers, json={
        "model": "gpt-4o", "messages": [video_message(file_url(m / "a.mp4"))]}), 404, "model 'gpt-4o' not found"),
    "no video": (lambda s, m, o: _chat(s, [{"role": "user", "content": "Hello?"}]), 400, "no video"),
    "video part without url": (lambda s, m, o: _chat(s, [{"role": "user", "content": [
        {"type": "video_url", "video_url": {}}, {"type": "text", "text": "What?"}]}]), 400, "has no url"),
    "path outside --media-dir": (lambda s, m, o: _chat(s, [video_message("file:///etc/passwd")]), 400, "outside --media-dir"),
    "path with ..": (lambda s, m, o: _chat(s, [video_message("file:../outside/secret.mp4")]), 400, "'..'"),
    "symlink escape": (lambda s, m, o: _chat(s, [video_message("file:escape-link.mp4")]), 400, "outside --media-dir"),
    "unknown video id": (lambda s, m, o: _chat(s, [video_message("video-0000")]), 404, "no uploaded video"),
    "unsupported URL": (lambda s, m, o: _chat(s, [video_message("ftp://host/a.mp4")]), 400, "unsupported URL"),
    "oversized upload": (lambda s, m, o: _upload(s, b"\0" * (2 * MB)), 413, "limit of 1 MB"),
    "oversized upload, no length": (lambda s, m, o: _HTTP.post(
        s.url + "/v1/videos", content=iter([b"\0" * (256 * 1024)] * 8),
        headers={**s.headers, "Content-Type": "video/mp4"}), 413, "upload is larger"),
    "oversized base64": (lambda s, m, o: _chat(s, [video_message(_data_url(MB + MB // 4))]), 413, "base64 data"),
    "oversized body": (lambda s, m, o: _chat(s, [video_message(_data_url(2 * MB))]), 413, "request body"),
    "bad base64": (lambda s, m, o: _chat(s, [video_message("data:video/mp4;base64,@@@@")]), 400, "not valid base64"),
    "non-video upload": (lambda s, m, o: _upload(s, b"just some text, not a video\n" * 100, "notes.txt"), 400,
                         "not a video"),
    "non-video data URL": (lambda s, m, o: _chat(s, [video_message(
        "data:video/mp4;base64," + base64.b64encode(b"hello" * 50).decode())]), 400, "not a video"),
    "missing API key": (lambda s, m, o: _chat(s, [video_message(file_url(m / "a.mp4"))], key=None), 401, "missing API key"),
    "wrong API key": (lambda s, m, o: _chat(s, [video_message(file_url(m / "a.mp4"))], key="wrong-key-000"), 401,
                      "invalid API key"),
    "max_tokens 0": (lambda s, m, o: _chat(s, [video_message(file_url(m / "a.mp4"))], max_tokens=0), 422, "max_tokens"),
    "max_tokens too large": (lambda s, m, o: _chat(s, [video_message(file_url(m / "a.mp4"))], max_tokens=10**7), 422,
                             "max_tokens must be <="),
    "unknown content type": (lambda s, m, o: _chat(s, [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": "x"}}, {"type": "text", "text": "What?"}]}]), 422,
        "unknown content type 'audio_url'"),
    "wrong field type": (lambda s, m, o: _chat(s, [video_message(file_url(m / "a.mp4"))], temperature="hot"), 422,
                         "temperature"),
    "frame count the export lacks": (lambda s, m, o: _chat(s, [video_message(file_url(m / "a.mp4"), nframes=4000)]),
                                     400, "frames"),
    "no route": (lambda s, m, o: _HTTP.get(s.url + "/v1/nothing", headers=s.headers), 404, "no route"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_gets_its_status_and_one_line(server, media, outside, name):
    send, status, text = CASES[name]
    before = server.metrics()["slowfast_media_bytes"]
    response = send(server, media, outside)
    assert response.status_code == status, (name, response.text[:300])
    error = response.json()["error"]
    assert text in error["message"], (name, error)
    assert "\n" not in error["message"] and "Traceback" not in response.text and set(error) >= {"type", "code", "param"}
    assert server.metrics()["slowfast_media_bytes"] <= before  # nothing refused is kept on disk


def test_openai_client_sees_the_right_exceptions(server, media):
    import openai

    good = [video_message(file_url(media / "a.mp4"))]
    expect = [
        (openai.AuthenticationError, lambda: server.client(api_key="wrong-key-000")),
        (openai.NotFoundError, lambda: server.client()),
    ]
    with pytest.raises(expect[0][0]):
        expect[0][1]().chat.completions.create(model=server.model, messages=good, max_tokens=2)
    with pytest.raises(expect[1][0]):
        expect[1][1]().chat.completions.create(model="nope", messages=good, max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError):
        server.client().chat.completions.create(model=server.model, messages=good, max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}])


def _long_stream(server, media):
    """Start a streaming request that would run for seconds; (response, client, lines) after its first piece.

    Keep ``lines``: a dropped line iterator closes the connection, which cancels the request."""
    client = httpx.Client(timeout=60)
    body = {"model": server.model, "messages": [video_message(file_url(media / "a.mp4"))], "max_tokens": 1500,
            "stream": True}
    response = client.send(client.build_request("POST", server.url + "/v1/chat/completions", json=body,
                                                headers=server.headers), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    while '"content": "' not in next(lines):
        pass
    return response, client, lines


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_stops_its_generation(server, media):
    before = server.metrics()
    response, client, _ = _long_stream(server, media)
    response.close()
    client.close()
    key = 'slowfast_cancelled_total{reason="disconnect"}'
    assert _wait_for(lambda: server.metrics().get(key, 0) == before.get(key, 0) + 1)
    after = server.metrics()
    done = 'slowfast_generations_total{finish_reason="length"}'
    assert after.get(done, 0) == before.get(done, 0)  # it did not run to max_tokens
    start = time.monotonic()
    assert _chat(server, [video_message(file_url(media / "a.mp4"))]).status_code == 200
    assert time.monotonic() - start < 10 and server.alive()


def test_full_queue_answers_429_with_retry_after(server, media):
    response, client, lines = _long_stream(server, media)  # running: the queue (2 places) is free
    results = []
    waiting = [threading.Thread(target=lambda: results.append(_chat(server, [video_message(file_url(media / "a.mp4"))])))
               for _ in range(2)]
    try:
        for thread in waiting:
            thread.start()
        assert _wait_for(lambda: server.metrics()["slowfast_queue_depth"] == 2)
        refused = _chat(server, [video_message(file_url(media / "a.mp4"))])
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
    finally:
        response.close()
        client.close()
        for thread in waiting:
            thread.join(60)
    assert [r.status_code for r in results] == [200, 200]


def test_server_still_serves_after_all_that(server, media):
    client = server.client()
    answer = client.chat.completions.create(model=server.model, messages=[video_message(file_url(media / "a.mp4"))],
                                            max_tokens=3, temperature=0)
    assert answer.usage.completion_tokens == 3 and server.alive()
    errors = server.metrics()
    assert errors.get('slowfast_errors_total{status="500"}', 0) == 0
