"""``python -m slowfast_trt.bench``: table, JSON fields, the recompute baseline, bad input.

(The same CLI on export folders, one per frame count, is tested in test_runtime_ort.py.)
"""

import json
import subprocess
import sys

from slowfast_trt.tools import bench

REQUIRED = (
    "frames", "slow_tokens", "fast_tokens", "vision_ms", "pooler_ms", "slow_kv_ms", "prefill_ms", "ttft_ms",
    "decode_ms_per_token", "decode_tokens_per_s", "followup_ttft_ms", "peak_host_mb", "peak_device_mb", "device_used_mb",
    "video_decode_ms", "preprocess_ms", "baseline_decode_ms_per_token", "baseline_ratio",
)


def test_bench_with_a_checkpoint(tiny_ckpt, sample_video, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--ckpt", str(tiny_ckpt), "--video", str(sample_video), "--frames", "2", "8",
                       "--new-tokens", "6", "--runs", "2", "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert (data["backend"], data["device"], data["decode_mode"], data["new_tokens"]) == ("torch", "cpu", "upstream", 6)
    rows = data["results"]
    assert [r["frames"] for r in rows] == [2, 8]
    for row in rows:
        assert set(REQUIRED) <= set(row)
        assert row["decode_ms_per_token"] > 0 and row["baseline_decode_ms_per_token"] > 0 and row["peak_host_mb"] > 0
        assert row["peak_device_mb"] is None and row["device_used_mb"] is None  # CPU run
    assert (rows[1]["slow_tokens"], rows[1]["fast_tokens"]) == (648, 648)
    assert data["decode_flatness"]["frames"] == [2, 8]
    printed = capsys.readouterr().out
    assert "base/ours" in printed and "decode ms/token at 8 vs 2 frames" in printed


def test_baseline_recomputes_the_slow_kv_every_step(tiny_ckpt, sample_video):
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    rt = SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu")
    engine = rt._model.engines["slow_kv"]
    calls = []
    original = engine.run
    engine.run = lambda feeds, outputs=None: calls.append(outputs) or original(feeds, outputs)
    bench.one_run(rt, str(sample_video), 2, new_tokens=5)
    # once to encode the video, then before each of the 4 decode steps of the baseline answer,
    # into the same buffers
    assert len(calls) == 5 and calls[0] is None and all(c is not None for c in calls[1:])


def test_bad_input_is_one_line_and_exit_2(tiny_ckpt, sample_video, tmp_path, capsys):
    cases = [
        (["--ckpt", str(tiny_ckpt), "--video", str(tmp_path / "none.mp4"), "--frames", "2"], "none.mp4: no such file"),
        (["--ckpt", str(tiny_ckpt), "--engines", str(tmp_path), "--video", str(sample_video), "--frames", "2"], "exactly one of"),
        (["--engines", str(tmp_path), "--video", str(sample_video), "--frames", "2"], "not an export folder"),
        (["--ckpt", str(tiny_ckpt), "--video", str(sample_video), "--frames", "2", "--runs", "0"], "--runs must be >= 1"),
    ]
    for argv, expected in cases:
        assert bench.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    proc = subprocess.run([sys.executable, "-m", "slowfast_trt.bench", "--ckpt", str(tmp_path / "nope"), "--video",
                           str(sample_video), "--frames", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: checkpoint directory not found"]
