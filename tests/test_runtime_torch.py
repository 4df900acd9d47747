"""SlowFastRuntime on the torch backend: token parity with the reference generator, follow-ups
equal to the full history from scratch, streaming, bad input, memory over many generations.

``check_conversation`` is shared with the ONNX Runtime tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slowfast_trt.prompt import ChatTurn, Conversation
from slowfast_trt.models.slowfast.reference import ReferenceGenerator
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.video import load_video

# Three turns: greedy, greedy follow-up, then a seeded sampled follow-up (varied tokens).
TURNS = (
    ("What is happening in this video?", dict(max_new_tokens=8)),
    ("What color is the cat?", dict(max_new_tokens=8)),
    ("Describe the video in detail.", dict(max_new_tokens=8, temperature=1.0, top_k=50, seed=5)),
)
CASES = [(ckpt, frames) for ckpt in ("tiny_ckpt", "tiny_ckpt_pool3d") for frames in (16, 32)]


def check_conversation(rt: SlowFastRuntime, reference: ReferenceGenerator, encoded, video, mode: str) -> list:
    """Ask TURNS in one session; each answer must equal the reference run from scratch on the history.

    ``video``: frames, or a video ``rt.encode_video`` returned (shared between sessions).
    """
    reference = ReferenceGenerator(reference.model, reference.tokenizer, decode_mode=mode)
    conversation = Conversation()
    results = []
    with rt.open_video(video, decode_mode=mode) as session:
        for turn, (question, sampling) in enumerate(TURNS):
            conversation.add_question(question)
            expected = reference.generate(video=encoded, conversation=conversation, sampling=SamplingParams(**sampling))
            got = session.ask(question, **sampling)
            assert got.token_ids == expected.token_ids, (mode, turn)
            assert got.text == expected.text and got.prompt_tokens == expected.prompt_tokens
            assert (got.slow_tokens, got.fast_tokens) == (expected.slow_tokens, expected.fast_tokens)
            if turn:  # a follow-up: no vision work, and only its own rows prefilled
                assert "vision_ms" not in got.timings_ms
                assert got.prefill_rows < 64 < got.fast_tokens and got.reused_rows + got.prefill_rows == got.prompt_tokens
            conversation.set_answer(expected.text)
            results.append(got)
    return results


@pytest.fixture(scope="module")
def clips(sample_video):
    return {n: load_video(sample_video, n).frames for n in (16, 32)}


@pytest.fixture(scope="module")
def loaded(request):
    """ckpt fixture name -> (torch runtime, reference generator), loaded once."""
    cache = {}

    def get(name):
        if name not in cache:
            ckpt = request.getfixturevalue(name)
            cache[name] = (SlowFastRuntime.load(ckpt, backend="torch", device="cpu"), ReferenceGenerator.load(ckpt))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def encodings(loaded, clips):
    cache = {}

    def get(name, frames):
        if (name, frames) not in cache:
            cache[name, frames] = loaded(name)[1].encode_video(clips[frames])
        return cache[name, frames]

    return get


@pytest.mark.parametrize("ckpt,frames", CASES)
def test_tokens_and_followups_match_the_reference(ckpt, frames, loaded, encodings, clips):
    rt, reference = loaded(ckpt)
    video = rt.encode_video(clips[frames])  # one encoding, two sessions (one per decode mode)
    by_mode = {mode: check_conversation(rt, reference, encodings(ckpt, frames), video, mode)
               for mode in ("upstream", "attend")}
    assert video.fast is not None  # a shared video outlives its sessions
    assert by_mode["upstream"][0].frames == frames
    if (ckpt, frames) == ("tiny_ckpt", 16):
        # Generated tokens reading the slow K/V change the output (visible in the sampled turn).
        assert [r.token_ids for r in by_mode["upstream"]] != [r.token_ids for r in by_mode["attend"]]


@pytest.mark.parametrize("mode", ["upstream", "attend"])
def test_followup_reuses_generated_rows_only_in_attend_mode(mode, loaded, encodings, clips):
    rt, reference = loaded("tiny_ckpt")
    reference = ReferenceGenerator(reference.model, reference.tokenizer, decode_mode=mode)
    # Stopping at token 291 ends the first answer after one token that was fed back and whose
    # text re-tokenizes to itself, so its cached row is reusable when it attended.
    first_sampling = dict(max_new_tokens=8, stop_token_ids=(291,))
    with rt.open_video(clips[16], decode_mode=mode) as session:
        first = session.ask(TURNS[0][0], **first_sampling)
        assert first.token_ids == reference.generate(TURNS[0][0], encodings("tiny_ckpt", 16), SamplingParams(**first_sampling)).token_ids
        assert len(first.token_ids) == 1 and rt.tokenizer(first.text).input_ids == first.token_ids
        second = session.ask(TURNS[1][0], max_new_tokens=6)
    assert second.reused_rows == first.prompt_tokens + (1 if mode == "attend" else 0)
    conversation = Conversation(turns=[ChatTurn(TURNS[0][0], first.text), ChatTurn(TURNS[1][0])])
    expected = reference.generate(video=encodings("tiny_ckpt", 16), conversation=conversation, sampling=SamplingParams(max_new_tokens=6))
    assert second.token_ids == expected.token_ids


def test_answer_starting_with_newlines_rolls_back_into_the_prompt(loaded, encodings, clips):
    """"\\n\\n" after the assistant header tokenizes with the header's "\\n": that cached row is redone."""
    rt, reference = loaded("tiny_ckpt")
    with rt.open_video(clips[16]) as session:
        first = session.ask(TURNS[0][0], max_new_tokens=3)
        answer = "\n\nIn the video, a cat walks."
        session._conversation = Conversation(turns=[ChatTurn(TURNS[0][0], answer)])  # as if generated
        second = session.ask(TURNS[1][0], max_new_tokens=6)
    assert second.reused_rows < first.prompt_tokens
    conversation = Conversation(turns=[ChatTurn(TURNS[0][0], answer), ChatTurn(TURNS[1][0])])
    expected = reference.generate(video=encodings("tiny_ckpt", 16), conversation=conversation, sampling=SamplingParams(max_new_tokens=6))
    assert second.token_ids == expected.token_ids


def test_an_answer_spelling_a_reserved_string_is_reported_not_kept(loaded, encodings, clips):
    """"<image>" spelt by ordinary tokens cannot go back into the template: the result and a
    warning say the turn is left out, and the next question sees the history without it."""
    rt, reference = loaded("tiny_ckpt")
    tokenizer = rt.tokenizer
    with rt.open_video(clips[16]) as session:
        session.ask(TURNS[0][0], max_new_tokens=3)
        kept = session._conversation.turns[0]
        turn = session._begin(TURNS[1][0], SamplingParams(max_new_tokens=8))
        turn.ids = tokenizer.encode("a cat and an <image> tag", add_special_tokens=False)  # as if generated
        with pytest.warns(RuntimeWarning, match="not kept in the session history.*'<image>'"):
            session._finish(turn)
        result = session.last_result
        assert result.text == "a cat and an <image> tag" and "'<image>'" in result.history_note
        assert result.to_json()["history_note"] == result.history_note
        assert list(session._conversation.turns) == [kept]
        followup = session.ask(TURNS[2][0], max_new_tokens=6)
    assert followup.history_note is None
    conversation = Conversation(turns=[kept, ChatTurn(TURNS[2][0])])
    expected = reference.generate(video=encodings("tiny_ckpt", 16), conversation=conversation,
                                  sampling=SamplingParams(max_new_tokens=6))
    assert followup.token_ids == expected.token_ids


def test_text_only_prompts_and_streaming(loaded, clips):
    rt, reference = loaded("tiny_ckpt")
    got = rt.generate(None, "Tell me a story about a cat.", max_new_tokens=6)
    assert got.token_ids == reference.generate("Tell me a story about a cat.", None, SamplingParams(max_new_tokens=6)).token_ids
    assert got.slow_tokens == got.fast_tokens == 0
    whole = rt.generate(clips[16], TURNS[0][0], max_new_tokens=10, temperature=1.0, seed=2)
    stream = rt.stream(clips[16], TURNS[0][0], max_new_tokens=10, temperature=1.0, seed=2)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == whole.text and stream.result.token_ids == whole.token_ids
    with rt.open_video(clips[16]) as session:
        partial = session.stream(TURNS[0][0], max_new_tokens=10)
        next(partial)
        partial.close()  # abandoned: the question does not join the history
        assert session.conversation.turns == ()
        assert session.ask(TURNS[0][0], max_new_tokens=8).token_ids == rt.generate(clips[16], TURNS[0][0], max_new_tokens=8).token_ids


def test_interleaved_streams_of_two_sessions(loaded):
    rt, _ = loaded("tiny_ckpt")
    questions = ("Tell me a story about a cat.", "Where does the video take place?")
    alone = [rt.generate(None, q, max_new_tokens=6, temperature=1.0, seed=1).token_ids for q in questions]
    with rt.open_video(None) as a, rt.open_video(None) as b:
        streams = [s.stream(q, max_new_tokens=6, temperature=1.0, seed=1) for s, q in zip((a, b), questions)]
        for _ in range(10):  # both prefilled first, then decoded in turns
            for stream in streams:
                next(stream, None)
        assert [s.result.token_ids for s in streams] == alone


def test_bad_input_leaves_the_session_usable(tiny_ckpt, loaded, encodings, clips):
    _, reference = loaded("tiny_ckpt")
    rt = SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu", max_seq_len=1380)
    with rt.open_video(clips[16]) as session:
        first = session.ask(TURNS[0][0], max_new_tokens=8)
        with pytest.raises(ValueError, match=r"prompt of 13\d\d rows .* \+ max_new_tokens 40 exceeds the maximum sequence length 1380"):
            session.ask(TURNS[1][0], max_new_tokens=40)
        for bad in ("", "<image> again"):
            with pytest.raises(ValueError, match="question"):
                session.ask(bad)
        with pytest.raises(ValueError, match="unknown sampling"):
            session.ask(TURNS[1][0], max_tokens=3)
        second = session.ask(TURNS[1][0], max_new_tokens=8)  # as if the errors never happened
    conversation = Conversation(turns=[ChatTurn(TURNS[0][0], first.text), ChatTurn(TURNS[1][0])])
    expected = reference.generate(video=encodings("tiny_ckpt", 16), conversation=conversation, sampling=SamplingParams(max_new_tokens=8))
    assert second.token_ids == expected.token_ids
    for frames, match in ((clips[16].astype("float32"), "uint8"), (clips[16][0, :, :, 0], "shape"), ("nope.mp4", "no such file")):
        with pytest.raises(ValueError, match=match):
            rt.open_video(frames)
    with pytest.raises(ValueError, match="holds 16 frames"):
        rt.open_video(clips[16], frames=8)


def test_closed_sessions_free_their_memory(loaded, clips):
    rt, _ = loaded("tiny_ckpt")
    sessions = [rt.open_video(clips[16]) for _ in range(3)]
    caches = [s._kv for s in sessions]
    for s in sessions:
        s.close()
        assert s.closed and s.video is None
    assert sum(not kv.released for kv in caches) <= 1  # at most one spare kept for reuse
    with pytest.raises(ValueError, match="closed"):
        sessions[0].ask(TURNS[0][0])


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_host_memory_stops_growing_over_200_generations(loaded, sample_video):
    rt, _ = loaded("tiny_ckpt")
    clip = load_video(sample_video, 4).frames
    session = rt.open_video(clip)
    rss = []
    for i in range(200):
        if i % 2:
            rt.generate(None, "Tell me a story about a cat.", max_new_tokens=3)
        elif i % 20 == 0:
            session.close()
            session = rt.open_video(clip)
            session.ask(TURNS[0][0], max_new_tokens=3)
        else:
            session.reset()
            session.ask(TURNS[0][0], max_new_tokens=3)
        if i % 50 == 49:
            rss.append(_rss_mb())
    session.close()
    # After warm-up (the first 50), memory stays flat: no per-generation leak.
    assert max(rss[1:]) - rss[0] < 8, rss
