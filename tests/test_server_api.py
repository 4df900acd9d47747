"""The real server (``python -m slowfast_trt.serve``) through the real ``openai`` client.

One tiny export and one server process for all server tests (see ``server_helpers``):
greedy answers equal ``python -m slowfast_trt.run --json`` token for token, streaming gives
the same text, a follow-up reuses the cached conversation and equals the from-scratch
answer, a second question about a video does no vision work, and every media source works.
"""

from __future__ import annotations

import base64
import functools
from http import server as http_server
import threading

import pytest

from server_helpers import FOLLOWUP, QUESTION, file_url, run_cli, shared_export, shared_media, shared_server, video_message

pytest.importorskip("fastapi")
pytest.importorskip("openai")

TOKENS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    return shared_server(tmp_path_factory)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return shared_media(tmp_path_factory)


def _ask(client, model, messages, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=kwargs.pop("max_tokens", TOKENS),
                                          temperature=0, **kwargs)


def test_models_and_health(server):
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]
    with server.http() as http:
        health = http.get("/health").json()
    assert health["status"] == "ok" and health["auth"] is True


def test_greedy_answer_equals_run_cli_and_stream(server, media, tmp_path_factory):
    video = media / "a.mp4"
    expected = run_cli(shared_export(tmp_path_factory), video, QUESTION, TOKENS, tmp_path_factory.mktemp("cli") / "a.json")
    client = server.client()
    answer = _ask(client, server.model, [video_message(file_url(video))])
    assert answer.choices[0].message.content == expected["text"]
    assert answer.usage.completion_tokens == len(expected["token_ids"])
    assert answer.usage.prompt_tokens == expected["prompt_tokens"]
    assert answer.choices[0].finish_reason == {"stop_string": "stop"}.get(expected["finish_reason"], expected["finish_reason"])

    pieces, usage = [], None
    for event in _ask(client, server.model, [video_message(file_url(video))], stream=True,
                      stream_options={"include_usage": True}):
        if event.choices and event.choices[0].delta.content:
            pieces.append(event.choices[0].delta.content)
        if event.usage is not None:
            usage = event.usage
    assert "".join(pieces) == expected["text"]
    assert usage.completion_tokens == len(expected["token_ids"]) and usage.prompt_tokens == expected["prompt_tokens"]


def test_followup_reuses_session_and_equals_from_scratch(server, media):
    client = server.client()
    first = _ask(client, server.model, [video_message(file_url(media / "b.mp4"))])
    history = [video_message(file_url(media / "b.mp4")),
               {"role": "assistant", "content": first.choices[0].message.content},
               {"role": "user", "content": FOLLOWUP}]
    cached = _ask(client, server.model, history)
    # The first request's session was taken and moved on: the same messages again start from scratch.
    scratch = _ask(client, server.model, history)
    assert cached.usage.prompt_tokens_details.cached_tokens > 0
    assert cached.model_extra["slowfast"]["session_cache_hit"] is True
    assert scratch.usage.prompt_tokens_details.cached_tokens == 0
    assert scratch.model_extra["slowfast"]["session_cache_hit"] is False
    assert cached.choices[0].message.content == scratch.choices[0].message.content
    assert cached.usage.completion_tokens == scratch.usage.completion_tokens
    assert cached.usage.prompt_tokens == scratch.usage.prompt_tokens > first.usage.prompt_tokens


def test_second_question_does_no_vision_work(server, tmp_path_factory):
    from slowfast_trt.fixtures.sample_video import write_sample_video

    video = write_sample_video(shared_media(tmp_path_factory) / "fresh.mp4", num_frames=16, width=48, height=32)
    client = server.client()
    before = server.metrics()
    first = _ask(client, server.model, [video_message(file_url(video))], max_tokens=2)
    middle = server.metrics()
    second = _ask(client, server.model, [video_message(file_url(video), "Describe the colours.")], max_tokens=2)
    after = server.metrics()
    assert middle["slowfast_video_encodes_total"] == before["slowfast_video_encodes_total"] + 1
    assert after["slowfast_video_encodes_total"] == middle["slowfast_video_encodes_total"]
    assert after["slowfast_vision_seconds_total"] == middle["slowfast_vision_seconds_total"]
    assert after["slowfast_video_cache_hits_total"] == middle["slowfast_video_cache_hits_total"] + 1
    assert "vision_ms" in first.model_extra["timings"] and "vision_ms" not in second.model_extra["timings"]
    assert second.model_extra["slowfast"]["video_cache_hit"] is True


def test_upload_data_url_and_http_give_the_same_answer(server, media):
    client = server.client()
    video = media / "a.mp4"
    reference = _ask(client, server.model, [video_message(file_url(video))], max_tokens=4).choices[0].message.content
    with server.http() as http:
        up = http.post("/v1/videos", files={"file": ("a.mp4", video.read_bytes(), "video/mp4")})
        assert up.status_code == 200, up.text
        video_id = up.json()["id"]
        assert video_id in [v["id"] for v in http.get("/v1/videos").json()["data"]]
        assert http.get(f"/v1/videos/{video_id}/content").content == video.read_bytes()
    data_url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    handler = functools.partial(_QuietHandler, directory=str(media))
    httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for url in (video_id, data_url, f"http://127.0.0.1:{httpd.server_address[1]}/a.mp4"):
            answer = _ask(client, server.model, [video_message(url)], max_tokens=4)
            assert answer.choices[0].message.content == reference, url[:40]
            assert answer.model_extra["slowfast"]["video_cache_hit"] is True  # same content, same encoding
    finally:
        httpd.shutdown()
    with server.http() as http:
        assert http.delete(f"/v1/videos/{video_id}").json()["deleted"] is True
        gone = http.delete(f"/v1/videos/{video_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "video_not_found"


def test_live_stream_from_a_media_file(server, media):
    with server.http() as http:
        for bad in ("/dev/video0", "file:///etc/passwd", "file:../x.mp4"):
            refused = http.post("/v1/streams", json={"source": bad, "window": 4})
            assert refused.status_code == 400 and "\n" not in refused.json()["error"]["message"], bad
        created = http.post("/v1/streams", json={"source": "file:a.mp4", "window": 4, "policy": "recent"})
        assert created.status_code == 200, created.text
        stream_id = created.json()["id"]
        answer = _ask(server.client(), server.model, [video_message(f"stream://{stream_id}")], max_tokens=4)
        assert answer.usage.completion_tokens == 4 and answer.choices[0].message.content
        info = http.get(f"/v1/streams/{stream_id}").json()
        assert info["stats"]["encoded"] >= 1
        assert http.delete(f"/v1/streams/{stream_id}").json()["deleted"] is True
        assert http.get(f"/v1/streams/{stream_id}").status_code == 404


def test_web_page_is_served_without_a_key(server):
    import httpx

    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "<title>slowfast_trt video chat</title>" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")  # no CDN or other origin
    assert "default-src 'none'" in page.headers["content-security-policy"]


class _QuietHandler(http_server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
