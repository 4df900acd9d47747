"""``run --live``: periodic questions as JSON lines while a file plays as a live source, typed
questions, and the one-line errors."""

from __future__ import annotations

import json
import time

from slowfast_trt.cli import run
from slowfast_trt.fixtures.sample_video import write_sample_video


def test_ask_every_prints_one_json_line_per_answer(tiny_exports, tmp_path, capsys):
    clip = write_sample_video(tmp_path / "clip.mp4", num_frames=24, fps=8)  # 3 s, played in real time
    argv = ["--engines", str(tiny_exports("tiny_ckpt")), "--video", clip, "--live", "--window", "8", "--sample-fps", "2",
            "--question", "What is happening?", "--ask-every", "1", "--max-new-tokens", "3", "--threads", "1"]
    assert run.main(argv) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) >= 2, captured
    times = [line["stream_time_s"] for line in lines]
    assert times == sorted(times) and times[-1] > times[0]  # later answers refer to later stream time
    for line in lines:
        assert line["question"] == "What is happening?" and len(line["token_ids"]) == 3
        assert line["window"]["last"]["timestamp_s"] <= line["stream_time_s"] and line["window"]["policy"] == "recent"
        assert line["timings_ms"]["ask_ttft_ms"] > 0 and "vision_ms" not in line["timings_ms"]
    assert "note: the stream ended (end of stream)" in captured.err


def test_typed_questions_and_errors(tiny_exports, tmp_path, capsys):
    clip = write_sample_video(tmp_path / "clip.mp4", num_frames=16, fps=8)

    def typing():
        yield "What is happening?\n"  # before the first frame: one error line, the stream goes on
        time.sleep(1.5)
        yield "What is happening?\n"
        yield "And then?\n"

    args = run.build_parser().parse_args(["--engines", str(tiny_exports("tiny_ckpt")), "--video", clip, "--live",
                                          "--max-new-tokens", "3", "--threads", "1"])
    status = run.run_live(args, stdin=typing())
    err = capsys.readouterr().err
    # the first line almost always beats the first frame's encode (then one error line, status 2)
    assert err.count("[stream time") + err.count("error: no frame has arrived yet") == 3
    assert err.count("[stream time") >= 2 and status == (2 if "error: no frame" in err else 0)
    for extra, message in ((["--question", "q"], "needs --ask-every"), (["--interactive"], "drop --interactive")):
        assert run.main(["--engines", str(tiny_exports("tiny_ckpt")), "--video", clip, "--live", *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert run.main(["--engines", str(tiny_exports("tiny_ckpt")), "--video", str(tmp_path / "none.mp4"), "--live"]) == 2
    assert "none.mp4: no such file" in capsys.readouterr().err
