"""Issue 11, fuzzing the Python API (hypothesis, bounded): every generated call to
``SlowFastRuntime`` either succeeds or raises ``ValueError`` (one line, the documented error
type; ``VideoError`` and ``ClosedError`` are ValueErrors), never anything else, never a hang.

Deterministic (``derandomize``): CI runs the same 50 examples every time, many of them
reaching generation (three values in four are drawn valid), in well under a minute on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install -e \".[test]\")")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_helpers import bounded as _bounded, fuzz_settings, mostly as _mostly  # noqa: E402
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime  # noqa: E402

FUZZ = fuzz_settings(25)


BAD_NUMBERS = st.one_of(st.sampled_from([0, -1, 10**9, 2**70, -(2**70), "1", "", None, True, [1]]),
                        st.floats(allow_nan=True, allow_infinity=True, width=32))
SAMPLING = st.fixed_dictionaries({}, optional={
    "max_new_tokens": _mostly(st.integers(1, 3), st.sampled_from([0, -2, 10**9, 2.0, "3", None])),
    "temperature": _mostly(st.sampled_from([0.0, 0.5, 1.0, 1e-30, 1e30]), BAD_NUMBERS),
    "top_p": _mostly(st.floats(0.01, 1.0), BAD_NUMBERS),
    "top_k": _mostly(st.integers(0, 600), BAD_NUMBERS),
    "repetition_penalty": _mostly(st.floats(0.1, 3.0), BAD_NUMBERS),
    "seed": _mostly(st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)), BAD_NUMBERS),
    "stop_strings": _mostly(st.lists(st.text(min_size=1, max_size=3), max_size=2), st.sampled_from(["", [""], 3, [None]])),
    "stop_token_ids": _mostly(st.lists(st.integers(0, 500), max_size=2), st.sampled_from([-1, "a", [-5], 2.5])),
}).flatmap(lambda d: st.sampled_from([d, d, d, {**d, "max_tokens": 3}]))  # sometimes an unknown name
QUESTIONS = _mostly(st.sampled_from(["What happens?", "Describe it.", "Tell me a story about a cat.", "\u4f60\u597d?"]),
                    st.one_of(st.text(max_size=12), st.sampled_from(["", "  ", "<image>", "a <image> b", None, 7])))


@pytest.fixture(scope="module")
def rt(tiny_ckpt):
    runtime = SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu", max_seq_len=600, frames=2)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def paths(tmp_path_factory, sample_video):
    root = tmp_path_factory.mktemp("fuzz_paths")
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mp4").write_bytes(b"\x00junk" * 50)
    (root / "junk.png").write_bytes(b"\x89PNG junk")
    return [str(sample_video), str(root / "missing.mp4"), str(root), str(root / "empty.mp4"), str(root / "junk.mp4"),
            str(root / "junk.png")]


def _videos(paths):
    good = st.one_of(st.none(), st.just(paths[0]), st.builds(
        lambda t, h, w: np.random.default_rng(t * h * w).integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        st.integers(1, 3), st.integers(2, 40), st.integers(2, 40)))
    arrays = st.builds(
        lambda t, h, w, c, dtype: np.full((t, h, w, c), 100, dtype=dtype),
        st.integers(0, 3), st.integers(1, 24), st.integers(1, 24), st.sampled_from([1, 3, 4]),
        st.sampled_from([np.uint8, np.float32, np.int64]),
    )
    odd = st.sampled_from([np.zeros((2, 8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8), 42, {"a": 1}, b"bytes", ["x"]])
    return _mostly(good, st.one_of(st.sampled_from(paths[1:]), arrays, odd))


def _documented(error) -> None:
    if error is None:
        return
    assert isinstance(error, ValueError), f"{type(error).__name__}: {error}"
    assert str(error).strip() and "\n" not in str(error).strip(), repr(error)


@st.composite
def video_options(draw):
    return draw(st.fixed_dictionaries({}, optional={
        "frames": _mostly(st.integers(1, 3), st.sampled_from([None, 0, -1, 10**6, 2.5, "2", True])),
        "sampling": st.sampled_from(["uniform", "fps", "random", None]),
        "fps": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([None, 0, 2, "1"])),
        "start_s": st.one_of(st.floats(-1, 8), st.sampled_from([None, float("nan"), 10**9, "0"])),
        "end_s": st.one_of(st.floats(-1, 8), st.sampled_from([None, float("inf"), 10**9])),
    }))


def test_fuzz_generate_and_stream(rt, paths):
    @FUZZ
    @given(video=_videos(paths), question=QUESTIONS, sampling=SAMPLING,
           frames=_mostly(st.sampled_from([None, 1, 2, 3]), st.sampled_from([0, -1, 10**6, 2.5, "3"])),
           decode_mode=_mostly(st.sampled_from([None, "upstream", "attend"]), st.just("bogus")), stream=st.booleans(),
           blocking=_mostly(st.booleans(), st.just("no")))
    def check(video, question, sampling, frames, decode_mode, stream, blocking):
        def call():
            if stream:
                pieces = rt.stream(video, question, frames=frames, decode_mode=decode_mode, blocking=blocking, **sampling)
                text = "".join(pieces)
                assert text == pieces.result.text
                return pieces.result
            return rt.generate(video, question, frames=frames, decode_mode=decode_mode, blocking=blocking, **sampling)

        result, error = _bounded(call)
        _documented(error)
        if error is None:
            assert result.finish_reason in ("stop", "length", "stop_string")

    check()


def test_fuzz_sessions_and_encoding(rt, paths):
    @FUZZ
    @given(video=_videos(paths), options=video_options(), questions=st.lists(QUESTIONS, min_size=1, max_size=2),
           sampling=SAMPLING, close_early=st.booleans())
    def check(video, options, questions, sampling, close_early):
        def call():
            with rt.open_video(video, **options) as session:
                for question in questions:
                    try:
                        session.ask(question, **sampling)
                    except ValueError:
                        pass  # a bad question leaves the session usable: go on
                    if close_early:
                        session.close()
                return session.closed

        _, error = _bounded(call)
        _documented(error)

    check()
