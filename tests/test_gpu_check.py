"""The one GPU check command, as CI runs it: a dry run on a machine without CUDA.

``python -m slowfast_trt.tools.gpu_check --dry-run`` must list every check it would run (with
its command) and exit 0; the floors it reports are checked on a tiny checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slowfast_trt.tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("build", "pytest-gpu", "bench-kernel", "assets", "bench-decode")


def test_the_dry_run_lists_every_check_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slowfast_trt.tools.gpu_check", "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split() and line.split()[0] in STEPS}
    assert tuple(lines) == STEPS, proc.stdout
    assert all(" skipped " in line and "dry run; would run:" in line for line in lines.values())
    assert "CMAKE_ARGS='-DSLOWFAST_CUDA_ARCHS=<cc>'" in lines["build"] and "pip install --no-build-isolation" in lines["build"]
    assert "-m gpu" in lines["pytest-gpu"] and "tests/test_kernels_gpu_streams.py" in lines["pytest-gpu"]
    assert "bench_cross_attn --frames 16 64 96" in lines["bench-kernel"]
    assert "SizedSpec(layers=4)" in lines["assets"]
    assert "--device cuda" in lines["bench-decode"] and "--decode-steps dynamic cuda-graph" in lines["bench-decode"]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and [s["name"] for s in report["steps"]] == list(STEPS)
    assert all(s["status"] == "skipped" and s["command"] for s in report["steps"])


def test_every_gpu_test_file_is_run():
    files = gpu_check.gpu_test_files(ROOT)
    for name in ("test_kernels_gpu.py", "test_kernels_gpu_streams.py", "test_kernels_gpu_dispatch.py",
                 "test_decode_graph_gpu.py", "test_ort_stream.py"):
        assert f"tests/{name}" in files
    assert "tests/test_gpu_check.py" not in files  # no gpu mark here: it runs in CI


def test_it_is_a_console_script():
    assert 'slowfast-gpu-check = "slowfast_trt.tools.gpu_check:main"' in (ROOT / "pyproject.toml").read_text()


def test_decode_floor_counts_the_decoder_weights_and_the_kv_rows(tiny_ckpt):
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt / "model.safetensors"), "pt") as f:
        decoder = sum(_numel(f.get_slice(n).get_shape())
                      for n in f.keys() if n.startswith(("model.layers.", "model.norm.", "lm_head.")))
    assert gpu_check.decoder_weight_bytes(tiny_ckpt) == 2 * decoder
    config = json.loads((tiny_ckpt / "config.json").read_text())
    kv_width = config["num_key_value_heads"] * config["hidden_size"] // config["num_attention_heads"]
    rows = [{"frames": 16, "decode_steps": "cuda-graph", "fast_tokens": 100, "decode_ms_per_token": 2.0},
            {"frames": 16, "decode_steps": "dynamic", "fast_tokens": 100, "decode_ms_per_token": 3.0}]
    graph, dynamic = gpu_check.decode_floors(rows, tiny_ckpt, bandwidth=1e12, max_seq_len=1000)
    kv_static = 2 * config["num_hidden_layers"] * 1000 * kv_width * 2
    assert graph["bytes_per_token"] == 2 * decoder + kv_static
    assert graph["floor_ms"] == pytest.approx(graph["bytes_per_token"] / 1e9)
    assert graph["x_floor"] == pytest.approx(2.0 / graph["floor_ms"])
    assert dynamic["bytes_per_token"] < graph["bytes_per_token"]  # the valid rows only


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _step(name, code, timeout=60, needs=()):
    return gpu_check.Step(name, "test", [sys.executable, "-c", code], timeout, needs=needs)


def test_steps_run_as_subprocesses_with_their_status_and_summary(tmp_path):
    import time

    deadline = time.monotonic() + 100
    ok = _step("pytest-gpu", "print('== 3 passed, 1 skipped in 2.0s ==')")
    gpu_check.run_step(ok, tmp_path, deadline)
    assert ok.status == "ok" and ok.summary == "3 passed, 1 skipped in 2.0s" and Path(ok.log).is_file()
    failed = _step("build", "import sys; print('nvcc: error'); sys.exit(3)")
    gpu_check.run_step(failed, tmp_path, deadline)
    assert failed.status == "failed (exit 3)" and failed.summary == "nvcc: error"
    slow = _step("assets", "import time; time.sleep(30)", timeout=1)
    gpu_check.run_step(slow, tmp_path, deadline)
    assert slow.status == "failed (timeout 1 s)"
    missing = _step("assets", "pass", needs=("no_such_module_here",))
    gpu_check.run_step(missing, tmp_path, deadline)
    assert missing.status == "not run" and "no_such_module_here" in missing.summary
    late = _step("bench-kernel", "pass")
    gpu_check.run_step(late, tmp_path, time.monotonic() + 5)
    assert late.status == "not run" and "time budget" in late.summary


def test_benchmark_summaries_read_their_json(tmp_path, tiny_ckpt):
    import shutil

    results = [{"path": "kernel", "phase": "decode", "batch": 1, "rows": 1, "frames": 64, "time_us": 21.5,
                "pct_of_floor": 61.0},
               {"path": "sdpa", "phase": "decode", "batch": 1, "rows": 1, "frames": 64, "time_us": 90.0,
                "pct_of_floor": 14.0}]
    (tmp_path / "bench_cross_attn.json").write_text(json.dumps({"bandwidth_bytes_per_s": 4.3e12, "results": results}))
    assert gpu_check._kernel_summary(None, tmp_path) == "decode 64f 22 us (61% of floor)"
    shutil.copytree(tiny_ckpt, tmp_path / "sized_ckpt")
    rows = [{"frames": 16, "decode_steps": "cuda-graph", "fast_tokens": 100, "decode_ms_per_token": 1.5}]
    (tmp_path / "bench_decode.json").write_text(json.dumps({"device": "cuda:0", "results": rows}))
    summary = gpu_check._decode_summary(None, tmp_path)
    assert summary.startswith("16f cuda-graph 1.50 ms/tok (floor ")
    floors = json.loads((tmp_path / "decode_floors.json").read_text())
    assert floors["bandwidth_bytes_per_s"] == 4.3e12 and "measured" in floors["bandwidth_source"]
