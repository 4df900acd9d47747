"""``python -m slowfast_trt.run``: JSON output and one clear line + exit 2 for bad input."""

import json
import shutil
import subprocess
import sys

import pytest

from slowfast_trt.fixtures import sample_video as videos


def run_cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "slowfast_trt.run", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_json_output(tiny_ckpt, sample_video, tmp_path):
    out = tmp_path / "out.json"
    code, stdout, stderr = run_cli("--ckpt", tiny_ckpt, "--video", sample_video, "--question", "What happens?",
                                   "--frames", 16, "--max-new-tokens", 5, "--json", out)
    assert code == 0, stderr
    data = json.loads(out.read_text())
    for key in ("text", "token_ids", "frames", "slow_tokens", "fast_tokens", "timings_ms"):
        assert key in data
    assert (data["frames"], data["slow_tokens"], data["fast_tokens"], len(data["token_ids"])) == (16, 1296, 1296, 5)
    assert data["text"] in stdout


def _bad_config(tiny_ckpt, tmp_path):
    target = tmp_path / "badcfg"
    shutil.copytree(tiny_ckpt, target)
    cfg = json.loads((target / "config.json").read_text())
    cfg["cross_attn_gating_type"] = "channel-wise-dynamic-sigmoid"
    (target / "config.json").write_text(json.dumps(cfg))
    return target


def _corrupt_ckpt(tiny_ckpt, tmp_path):
    target = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, target)
    (target / "model.safetensors").write_bytes(b"garbage")
    return target


CASES = {
    "missing checkpoint": (lambda c, v, t: (t / "nope", v, "q"), "checkpoint directory not found"),
    "corrupt checkpoint": (lambda c, v, t: (_corrupt_ckpt(c, t), v, "q"), "corrupt or unreadable safetensors"),
    "unsupported config": (lambda c, v, t: (_bad_config(c, t), v, "q"), "cross_attn_gating_type"),
    "unreadable video": (lambda c, v, t: (c, videos.write_corrupt_video(t / "bad.mp4"), "q"), "bad.mp4"),
    "zero-frame video": (lambda c, v, t: (c, videos.write_empty_video(t / "empty.mp4"), "q"), "empty.mp4"),
    "no video stream": (lambda c, v, t: (c, videos.write_audio_only_file(t / "audio.wav"), "q"), "audio.wav"),
    "unsupported pixel format": (lambda c, v, t: (c, videos.write_unconvertible_video(t / "odd.mkv"), "q"), "odd.mkv"),
    "missing video": (lambda c, v, t: (c, t / "none.mp4", "q"), "none.mp4"),
    "empty question": (lambda c, v, t: (c, v, "   "), "question is empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, tiny_ckpt, sample_video, tmp_path):
    make, expected = CASES[case]
    ckpt, video, question = make(tiny_ckpt, sample_video, tmp_path)
    code, _, stderr = run_cli("--ckpt", ckpt, "--video", video, "--question", question, "--frames", 4, "--max-new-tokens", 2)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr
