"""Issue 11, fuzzing ``python -m slowfast_trt.run``'s options (hypothesis, bounded): every
generated command line exits 0 with an answer, or 2 with one ``error:`` line (argparse's own
usage errors included), never a traceback, never a hang.

In-process ``main(argv)`` (a traceback would be an exception here); the model loads are those
of the tiny checkpoint. Deterministic (``derandomize``): the same 40 command lines every run,
a part of them answered (three values in four are drawn valid).
"""

from __future__ import annotations

import io
import sys

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install -e \".[test]\")")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_helpers import bounded, fuzz_settings, mostly as _mostly  # noqa: E402
from slowfast_trt.cli import run as run_cli  # noqa: E402

FUZZ = fuzz_settings(40)


NUMBER_TEXT = st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "abc", "", "1e-300", "99999999999999999999"])
OPTIONS = {  # option -> its values (strings, as a shell passes them)
    "--frames": _mostly(st.sampled_from(["1", "2", "3"]), st.sampled_from(["0", "-3", "1000", "100000", "2.5", "x"])),
    "--max-new-tokens": _mostly(st.sampled_from(["1", "2", "3"]), st.sampled_from(["0", "-1", "1000000000", "x"])),
    "--temperature": _mostly(st.sampled_from(["0", "0.7", "1e-30"]), NUMBER_TEXT),
    "--top-p": _mostly(st.sampled_from(["0.5", "1"]), NUMBER_TEXT),
    "--top-k": _mostly(st.sampled_from(["0", "5"]), NUMBER_TEXT),
    "--repetition-penalty": _mostly(st.sampled_from(["1", "1.3"]), NUMBER_TEXT),
    "--seed": _mostly(st.sampled_from(["0", "7", "-5"]), st.sampled_from(["x", "1e3", "99999999999999999999999"])),
    "--stop": _mostly(st.sampled_from(["a", "\n", "STOP"]), st.just("")),
    "--decode-mode": _mostly(st.sampled_from(["upstream", "attend"]), st.just("sideways")),
    "--dtype": _mostly(st.sampled_from(["float32", "bfloat16"]), st.just("int8")),
    "--backend": _mostly(st.sampled_from(["auto", "torch"]), st.sampled_from(["onnxruntime", "tensorrt", "banana"])),
    "--device": _mostly(st.just("cpu"), st.sampled_from(["banana", "cuda", "cuda:7", "", "mps", "cpu:0"])),
    "--threads": _mostly(st.sampled_from(["1", "2"]), st.sampled_from(["0", "-2", "x"])),
    "--vision-batch": _mostly(st.sampled_from(["1", "2"]), st.sampled_from(["0", "-1"])),
    "--decode-steps": _mostly(st.sampled_from(["auto", "dynamic", "static"]), st.sampled_from(["cuda-graph", "warp"])),
    "--sampling": _mostly(st.just("uniform"), st.sampled_from(["fps", "random"])),
    "--fps": _mostly(st.sampled_from(["1", "4", "0.5"]), NUMBER_TEXT),
    "--start": _mostly(st.sampled_from(["0", "1.5", "3"]), NUMBER_TEXT),
    "--end": _mostly(st.sampled_from(["2", "4.9"]), NUMBER_TEXT),
}
FLAGS = ["--stream", "--interactive", "--demo"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_ckpt, sample_video):
    root = tmp_path_factory.mktemp("fuzz_cli")
    (root / "empty.mp4").write_bytes(b"")
    return {
        "ckpt": [str(tiny_ckpt), str(root / "missing"), str(root), str(sample_video)],
        "video": [str(sample_video), str(root / "missing.mp4"), str(root), str(root / "empty.mp4"), str(tiny_ckpt)],
        "json": [str(root / "out.json"), "/proc/x.json", str(root), str(root / "no" / "dir.json")],
    }


@st.composite
def command_lines(draw, inputs):
    argv = ["--ckpt", draw(_mostly(st.just(inputs["ckpt"][0]), st.sampled_from(inputs["ckpt"][1:])))]
    argv += ["--video", draw(_mostly(st.just(inputs["video"][0]), st.sampled_from(inputs["video"][1:])))]
    question = draw(_mostly(st.sampled_from(["What happens?", "Describe it."]),
                            st.one_of(st.text(max_size=8), st.sampled_from(["", "<image>"]))))
    if draw(_mostly(st.just(True), st.just(False))):  # else: missing, or from stdin with --interactive
        argv += ["--question", question]
    argv += ["--frames", "2", "--max-new-tokens", "2"]  # cheap defaults; the options below may override them
    for option in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4, unique=True)):
        argv += [option, draw(OPTIONS[option])]
    if draw(st.booleans()):
        argv += ["--json", draw(_mostly(st.just(inputs["json"][0]), st.sampled_from(inputs["json"][1:])))]
    argv += draw(st.lists(st.sampled_from(FLAGS[:2]), max_size=1))  # --demo: its own test (it exports)
    return argv


def _run(argv, stdin_text: str):
    """(status, stdout, stderr) of main(argv) in a thread with stdio captured; fails on a hang."""
    out, err = io.StringIO(), io.StringIO()

    def call():
        saved = sys.stdin, sys.stdout, sys.stderr
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin_text), out, err
        try:
            return run_cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            return exc.code
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved

    code, error = bounded(call, str(argv))  # any other exception is a traceback: fails below
    assert error is None, f"{argv}: {type(error).__name__}: {error}"
    return code, out.getvalue(), err.getvalue()


def test_fuzz_run_command_lines(inputs):
    @FUZZ
    @given(argv=command_lines(inputs), stdin=st.sampled_from(["", "What next?\n", "/reset\n\nAnd?\n", "<image>\n"]))
    def check(argv, stdin):
        code, out, err = _run(argv, stdin)
        assert "Traceback" not in err, (argv, err)
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("error: ") or ": error: " in line]
            assert errors, (argv, err)
            if "--interactive" not in argv:
                assert len(errors) == 1, (argv, err)
        else:
            assert "new tokens" in err, (argv, err)  # the stats line of an answer

    check()
