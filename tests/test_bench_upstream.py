"""bench_upstream: the side-by-side benchmark runs every system with rotated rounds, reads an
external harness through its JSON protocol, and counts FLOPs; no timing is asserted."""

from __future__ import annotations

import json
import sys

import pytest

from slowfast_trt.models.slowfast.checkpoint import open_model
from slowfast_trt.tools import bench_upstream as B
from slowfast_trt.tools.flops import prefill_flops, vision_flops

FAKE_HARNESS = """
import argparse, json
p = argparse.ArgumentParser()
for a in ("--ckpt", "--new-tokens", "--rounds", "--threads", "--crops"):
    p.add_argument(a)
p.add_argument("--frames", type=int, nargs="+")
args = p.parse_args()
import numpy as np
crops = np.load(args.crops)
for n in args.frames:
    assert crops[str(n)].shape[0] == n and crops[str(n)].dtype == np.uint8
    print(json.dumps({"frames": n, "ttft_ms": 100.0 * n, "decode_ms_per_token": 10.0}))
"""


def test_side_by_side_with_a_harness(tiny_ckpt, sample_video, tmp_path, capsys):
    harness = tmp_path / "harness.py"
    harness.write_text(FAKE_HARNESS)
    out_json = tmp_path / "out.json"
    argv = ["--ckpt", str(tiny_ckpt), "--video", str(sample_video), "--frames", "1", "2", "--new-tokens", "2",
            "--rounds", "2", "--systems", "torch", "upstream-style", "upstream",
            "--upstream-cmd", f"{sys.executable} {harness}", "--json", str(out_json)]
    assert B.main(argv) == 0
    out = json.loads(out_json.read_text())
    rows = {(r["system"], r["frames"]): r for r in out["results"]}
    assert set(rows) == {(s, n) for s in ("torch", "upstream-style", "upstream") for n in (1, 2)}
    assert all(r["rounds"] == 2 and r["versus"] == "upstream" for r in rows.values())
    assert rows[("upstream", 2)]["ttft_ms"] == 200.0 and rows[("upstream", 2)]["ttft_ms_ratio"] == 1.0
    # The upstream-style pipeline generates the reference's greedy tokens (same modules).
    assert rows[("torch", 2)]["tokens"] == rows[("upstream-style", 2)]["tokens"]
    assert rows[("torch", 1)]["vision_gflop"] > 0 and rows[("torch", 1)]["prefill_floor_ms"] > 0
    orders = [[s["system"] for s in out["samples"] if s["round"] == r and s["frames"] == 1] for r in (0, 1)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])  # rotated
    assert "upstream-style" in capsys.readouterr().out


def test_a_failing_harness_is_one_error(tiny_ckpt, sample_video, tmp_path, capsys):
    argv = ["--ckpt", str(tiny_ckpt), "--video", str(sample_video), "--frames", "1", "--rounds", "1",
            "--new-tokens", "2", "--systems", "upstream", "--upstream-cmd", f"{sys.executable} -c 'raise SystemExit(3)'"]
    assert B.main(argv) == 2
    assert "--upstream-cmd failed (exit 3)" in capsys.readouterr().err


def test_flops_of_the_tiny_model(tiny_ckpt):
    model = open_model(tiny_ckpt)
    spec = model.vision.spec
    one = vision_flops(spec, 1, 576)
    assert vision_flops(spec, 4, 576) == pytest.approx(4 * one)
    stem = 2 * 144 * 144 * spec.dims[0] * 3 * 16
    assert one > stem
    text = model.config.text
    base = prefill_flops(model.config, 100, 0, 0, lm_head_rows=0)
    assert prefill_flops(model.config, 100, 0, 0, lm_head_rows=3) - base == pytest.approx(6 * text.hidden_size * text.vocab_size)
    assert prefill_flops(model.config, 100, 50, 10) > prefill_flops(model.config, 100, 0, 0)
