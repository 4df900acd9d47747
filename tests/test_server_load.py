"""Load on the real server (localhost, bounded): 16 concurrent clients x 4 requests over two
videos; every answer equals the one asked alone, none is lost; p50/p95 latency, aggregate
tokens/s and the server's memory (RSS after the run within 10% of after warm-up).

Each client holds two conversations (a question, then a follow-up) about the two videos,
so some follow-ups continue a cached session and others (whose session another client
took or that was evicted) start from scratch; both must give the same tokens.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest

from server_helpers import FOLLOWUP, ServerProcess, file_url, shared_export, shared_media, video_message

pytest.importorskip("fastapi")
pytest.importorskip("openai")

CLIENTS, TOKENS = 16, 16


def _conversation(client, model, url, first_answer=None):
    """Ask QUESTION about ``url`` (or the follow-up after ``first_answer``); (text, tokens, seconds)."""
    messages = [video_message(url)]
    if first_answer is not None:
        messages += [{"role": "assistant", "content": first_answer}, {"role": "user", "content": FOLLOWUP}]
    start = time.perf_counter()
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=TOKENS, temperature=0)
    return answer.choices[0].message.content, answer.usage.completion_tokens, time.perf_counter() - start


def _round(server, urls, expected, per_client: int, clients: int):
    """``clients`` threads, each asking ``per_client`` requests; returns (latencies, tokens, failures, wall)."""
    latencies, tokens, failures, lock = [], [0], [], threading.Lock()

    def run(index):
        client = server.client(timeout=300)
        order = [urls[index % 2], urls[(index + 1) % 2]]
        try:
            for n in range(per_client):
                url = order[(n // 2) % 2]
                first = expected[(url, 1)] if n % 2 else None
                text, count, seconds = _conversation(client, server.model, url, first)
                with lock:
                    latencies.append(seconds)
                    tokens[0] += count
                    if text != expected[(url, 2 if n % 2 else 1)]:
                        failures.append((index, n, text))
        except Exception as exc:  # collected: a lost request fails the test below
            with lock:
                failures.append((index, "error", repr(exc)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return latencies, tokens[0], failures, time.perf_counter() - start


@pytest.mark.slow
def test_sixteen_clients_four_requests_each(tmp_path_factory, tmp_path):
    media = shared_media(tmp_path_factory)
    server = ServerProcess(shared_export(tmp_path_factory), "--media-dir", str(media), "--max-queue", "64",
                           "--max-sessions", "8")
    try:
        urls = [file_url(media / "a.mp4"), file_url(media / "b.mp4")]
        client = server.client()
        expected = {}
        for url in urls:  # asked alone, one at a time
            expected[(url, 1)] = _conversation(client, server.model, url)[0]
            expected[(url, 2)] = _conversation(client, server.model, url, expected[(url, 1)])[0]
        warm = _round(server, urls, expected, per_client=2, clients=CLIENTS)
        assert not warm[2], warm[2][:3]
        rss_warm = server.rss_mb()
        latencies, tokens, failures, wall = _round(server, urls, expected, per_client=4, clients=CLIENTS)
        rss_after = server.rss_mb()
        metrics = server.metrics()
    finally:
        server.stop()
    assert not failures, failures[:3]
    assert len(latencies) == CLIENTS * 4
    cuts = statistics.quantiles(latencies, n=100)
    report = {"requests": len(latencies), "clients": CLIENTS, "max_tokens": TOKENS, "wall_s": round(wall, 2),
              "p50_s": round(statistics.median(latencies), 3), "p95_s": round(cuts[94], 3),
              "aggregate_tokens_per_s": round(tokens / wall, 1), "requests_per_s": round(len(latencies) / wall, 2),
              "rss_after_warmup_mb": round(rss_warm, 1), "rss_after_run_mb": round(rss_after, 1),
              "session_cache_hits": metrics["slowfast_session_cache_hits_total"],
              "video_encodes": metrics["slowfast_video_encodes_total"]}
    out = tmp_path / "load.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nload test: {json.dumps(report)}\n(written to {out})")
    assert metrics["slowfast_video_encodes_total"] == 2  # one per video, whatever the load
    assert rss_after <= 1.10 * rss_warm, report
