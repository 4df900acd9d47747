"""``bench --stream``: per-frame encode, the camera rate, and a live window's question against
the same frames re-encoded as a clip, in one run (table and JSON)."""

from __future__ import annotations

import json

from slowfast_trt.tools import bench


def test_bench_stream_on_one_export(tiny_exports, sample_video, tmp_path, capsys):
    out = tmp_path / "stream.json"
    assert bench.main(["--stream", "--engines", str(tiny_exports("tiny_ckpt")), "--video", str(sample_video),
                       "--frames", "4", "--runs", "1", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert data["mode"] == "stream" and data["backend"] == "onnxruntime" and row["window"] == 4
    assert set(row["encode_ms"]) == {"preprocess", "vision", "projector", "slow_kv"}
    assert row["encode_ms_per_frame"] > row["encode_ms"]["vision"] > 0
    assert abs(row["max_camera_fps"] - 1e3 / row["encode_ms_per_frame"]) < 1e-6
    # The clip pays the vision tower for every frame; the live question does not.
    assert row["clip_ttft_ms"] > row["live_ttft_ms"] > row["live_prefill_ms"] > 0 and row["clip_over_live"] > 1
    report = capsys.readouterr().out
    assert "live ttft" in report and "sooner than re-encoding the 4 frames as a clip" in report
    assert bench.main(["--stream", "--engines", str(tiny_exports("tiny_ckpt")), "--video", str(sample_video),
                       "--frames", "1"]) == 2
    assert "windows (--frames) >= 2" in capsys.readouterr().err
