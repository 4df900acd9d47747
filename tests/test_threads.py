"""Issue 11, concurrency: a SlowFastRuntime called from several threads gives exactly the
single-threaded answers (ONNX Runtime and torch backends); busy and closed objects say so."""

from __future__ import annotations

import threading

import pytest

from slowfast_trt.runtime.serialize import ClosedError, RuntimeBusyError
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.video import load_video

THREADS, CALLS = 3, 3
QUESTIONS = ("What happens in the video?", "Describe the colours.", "Tell me a story about a cat.")


@pytest.fixture(scope="module")
def clips(sample_video):
    return {n: load_video(sample_video, n).frames for n in (2, 4)}


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def rt(request, tiny_ckpt, tiny_exports):
    if request.param == "torch":
        runtime = SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu", max_seq_len=1024)
    else:
        runtime = SlowFastRuntime.load(tiny_exports("tiny_ckpt"), threads=1)
    yield runtime
    runtime.close()


def _call(rt, clips, thread: int, call: int) -> list[int]:
    """Call ``call`` of thread ``thread``: a different video, question, sampling and API per call."""
    video = (clips[2], clips[4], None)[(thread + call) % 3]
    question = QUESTIONS[(thread * 2 + call) % 3]
    sampling = dict(max_new_tokens=5, temperature=0.0 if call == 0 else 1.0, seed=thread * 10 + call)
    kind = (thread + call) % 3
    if kind == 0:
        return rt.generate(video, question, **sampling).token_ids
    if kind == 1:
        pieces = rt.stream(video, question, **sampling)
        for _ in pieces:
            pass
        return pieces.result.token_ids
    with rt.open_video(video) as session:  # a follow-up in a session of its own
        first = session.ask(question, **sampling).token_ids
        return first + session.ask("And then?", **sampling).token_ids


def test_threads_get_the_single_threaded_answers(rt, clips):
    expected = {(t, c): _call(rt, clips, t, c) for t in range(THREADS) for c in range(CALLS)}
    got, errors = {}, []
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            start.wait()
            for c in range(CALLS):
                got[(t, c)] = _call(rt, clips, t, c)
        except BaseException as exc:  # reported below with the thread's number
            errors.append((t, repr(exc)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors
    assert got == expected


def _blocked_engine(rt):
    """Make the next vision run wait for ``release``; ``entered`` is set once it is inside."""
    engine = rt._model.engines["vision"]
    original, entered, release = engine.run, threading.Event(), threading.Event()

    def run(*args, **kwargs):
        entered.set()
        release.wait(timeout=120)
        return original(*args, **kwargs)

    engine.run = run
    return engine, original, entered, release


def test_blocking_false_is_busy_while_another_thread_runs(rt, clips):
    engine, original, entered, release = _blocked_engine(rt)
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("a", rt.generate(clips[2], QUESTIONS[0], max_new_tokens=3)))
    try:
        worker.start()
        assert entered.wait(timeout=120)
        with pytest.raises(RuntimeBusyError, match="busy"):
            rt.generate(None, QUESTIONS[1], max_new_tokens=3, blocking=False)
        with pytest.raises(RuntimeBusyError):
            rt.encode_video(clips[2], blocking=False)
        waiting = threading.Thread(target=lambda: results.setdefault("b", rt.generate(None, QUESTIONS[1], max_new_tokens=3)))
        waiting.start()  # blocking (the default): waits for the first call
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and "b" not in results
    finally:
        release.set()
        engine.run = original
        worker.join(timeout=120)
    waiting.join(timeout=120)
    assert results["a"].token_ids and results["b"].token_ids
    assert rt.generate(None, QUESTIONS[1], max_new_tokens=3, blocking=False).token_ids == results["b"].token_ids


def test_a_newer_question_ends_the_unfinished_stream_of_its_session(rt):
    with rt.open_video(None) as session:
        first = session.stream(QUESTIONS[0], max_new_tokens=6)
        next(first)
        second = session.ask(QUESTIONS[2], max_new_tokens=4)
        with pytest.raises(ValueError, match="interrupted: another question"):
            next(first)
        assert [t.question for t in session.conversation.turns] == [QUESTIONS[2]]
        assert second.token_ids == rt.generate(None, QUESTIONS[2], max_new_tokens=4).token_ids


def test_closed_runtime_sessions_and_streams_raise_one_error(tiny_ckpt, clips):
    rt = SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu", max_seq_len=1024)
    session = rt.open_video(None)
    pieces = rt.stream(None, QUESTIONS[0], max_new_tokens=6)
    next(pieces)
    other = session.stream(QUESTIONS[1], max_new_tokens=6)
    rt.close()
    rt.close()  # idempotent
    calls = [lambda: rt.generate(None, "hi"), lambda: rt.stream(None, "hi"), lambda: rt.open_video(None),
             lambda: rt.encode_video(clips[2]), lambda: rt.open_stream(window=2), lambda: session.ask("hi"),
             lambda: next(pieces), lambda: next(other)]
    for call in calls:
        with pytest.raises(ClosedError, match="closed"):
            call()
    assert session.closed


def test_a_stream_after_its_session_closed_raises_one_error(rt):
    session = rt.open_video(None)
    pieces = session.stream(QUESTIONS[0], max_new_tokens=6)
    next(pieces)
    session.close()
    with pytest.raises(ClosedError, match="video session is closed"):
        next(pieces)
