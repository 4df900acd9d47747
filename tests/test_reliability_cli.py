"""Issue 11, commands: every listed bad input is exit 2 and one ``error:`` line naming the
option, file or key (never a traceback); valid input gets its answer; results are never lost.

Most cases call ``main(argv)`` in-process (a traceback would fail the test as an exception);
pipes, terminals and the shell's view of a closed stdout run the real command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slowfast_trt.cli import run as run_cli
from slowfast_trt.tools import bench as bench_cli
from slowfast_trt.tools import jetson_memory

CPU_ONLY = not torch.cuda.is_available()


def call(main, argv, capsys):
    """(exit status, stdout, stderr) of an in-process command."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code, err, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def ask(tiny_ckpt, sample_video):
    """Base argv of one cheap question on the tiny checkpoint."""
    return ["--ckpt", tiny_ckpt, "--video", sample_video, "--question", "What happens?", "--frames", 2,
            "--max-new-tokens", 2]


BAD_RUN_OPTIONS = {
    "temperature nan": (["--temperature", "nan"], "--temperature"),
    "temperature inf": (["--temperature", "inf"], "--temperature"),
    "repetition penalty nan": (["--repetition-penalty", "nan"], "--repetition-penalty"),
    "repetition penalty inf": (["--repetition-penalty", "inf"], "--repetition-penalty"),
    "threads -2": (["--threads", "-2"], "--threads"),
    "vision batch 0": (["--vision-batch", "0"], "--vision-batch"),
    "empty stop string": (["--stop", ""], "--stop"),
    "device banana": (["--device", "banana"], "--device"),
    "frames 1000": (["--frames", "1000"], "frames=1000"),
    "frames 100000": (["--frames", "100000"], "frames=100000"),
}


@pytest.mark.parametrize("case", list(BAD_RUN_OPTIONS))
def test_bad_options_are_one_line(case, ask, capsys):
    extra, word = BAD_RUN_OPTIONS[case]
    code, out, err = call(run_cli.main, ask + extra, capsys)
    one_error(code, err, word)
    assert out == ""


@pytest.mark.skipif(not CPU_ONLY, reason="a CUDA device is present")
def test_cuda_without_cuda_is_one_line(ask, capsys):
    code, _, err = call(run_cli.main, ask + ["--device", "cuda"], capsys)
    one_error(code, err, "--device", "no CUDA device")


def test_float16_on_cpu_answers_or_says_why(ask, capsys):
    """The README's command on a CPU: 64 frames take avg_pool3d, which CPU torch lacks in float16."""
    code, out, err = call(run_cli.main, ask + ["--dtype", "float16", "--frames", 64], capsys)
    if code != 0:
        one_error(code, err, "float16", "cpu")
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["/proc/x.json", "missing/folder/out.json", "."])
def test_unwritable_json_fails_before_any_work(where, ask, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_cli, "load_runtime", lambda *a: pytest.fail("the model was loaded"))
    code, out, err = call(run_cli.main, ask + ["--json", where], capsys)
    one_error(code, err, "--json")
    assert out == ""
    code, out, err = call(run_cli.main, ask + ["--json", where, "--interactive"], capsys)
    one_error(code, err, "--json")


def test_json_that_fails_at_the_end_keeps_the_answer(ask, capsys, monkeypatch, tmp_path):
    target = tmp_path / "out.json"
    original = Path.write_text

    def failing(self, *args, **kwargs):
        if self == target:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    code, out, err = call(run_cli.main, ask + ["--json", target], capsys)
    line = one_error(code, err, "--json", "No space left", "printed to stdout")
    assert out.strip(), line  # the answer


VIDEO_CASES = {
    "directory": (lambda t: t, "is a directory"),
    "zero-byte video": (lambda t: _touch(t / "zero.mp4"), "empty (0 bytes)"),
    "zero-byte image": (lambda t: _touch(t / "zero.png"), "empty (0 bytes)"),
}


def _touch(path):
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_paths_say_what_is_wrong(case, ask, capsys, tmp_path):
    make, words = VIDEO_CASES[case]
    argv = list(ask)
    argv[argv.index("--video") + 1] = make(tmp_path)
    code, _, err = call(run_cli.main, argv, capsys)
    one_error(code, err, words)


def test_16bit_grayscale_png_is_answered(ask, capsys, tmp_path):
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)).save(tmp_path / "g16.png")
    argv = list(ask)
    argv[argv.index("--video") + 1] = tmp_path / "g16.png"
    code, out, err = call(run_cli.main, argv, capsys)
    assert code == 0 and out.strip(), err


def _ckpt_with_config(tiny_ckpt, tmp_path, text):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, target)
    (target / "config.json").write_text(text)
    return target


CONFIG_CASES = {
    "a list": (lambda cfg: json.dumps([1, 2]), ["config.json", "JSON object"]),
    "invalid JSON": (lambda cfg: "{nope", ["config.json", "not valid JSON"]),
    "a string for rope_theta": (lambda cfg: json.dumps({**cfg, "rope_theta": "sixty-four"}), ["config.json", "'rope_theta'"]),
    "a string for hidden_size": (lambda cfg: json.dumps({**cfg, "hidden_size": "sixty-four"}), ["config.json", "'hidden_size'"]),
    "a string for tie_word_embeddings": (lambda cfg: json.dumps({**cfg, "tie_word_embeddings": "yes"}),
                                         ["config.json", "'tie_word_embeddings'"]),
    "a string for torch_dtype": (lambda cfg: json.dumps({**cfg, "torch_dtype": "sixty-four"}), ["config.json", "'torch_dtype'"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_errors_name_the_file_and_key(case, ask, tiny_ckpt, capsys, tmp_path):
    make, words = CONFIG_CASES[case]
    cfg = json.loads((Path(tiny_ckpt) / "config.json").read_text())
    argv = list(ask)
    argv[argv.index("--ckpt") + 1] = _ckpt_with_config(tiny_ckpt, tmp_path, make(cfg))
    code, _, err = call(run_cli.main, argv, capsys)
    line = one_error(code, err, *words)
    assert "tokenizer" not in line


def test_missing_tensor_is_named_as_the_checkpoint_names_it(ask, tiny_ckpt, capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    target = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, target)
    state = load_file(str(target / "model.safetensors"))
    state.pop("model.layers.1.self_attn.q_proj.weight")
    save_file(state, str(target / "model.safetensors"))
    argv = list(ask)
    argv[argv.index("--ckpt") + 1] = target
    code, _, err = call(run_cli.main, argv, capsys)
    line = one_error(code, err, "model.layers.1.self_attn.q_proj.weight")
    assert "decoder.layers.1.q_proj" not in line


# -- bench and jetson_memory ----------------------------------------------------------------


def test_bench_json_is_checked_before_measuring(tiny_ckpt, sample_video, capsys, monkeypatch):
    monkeypatch.setattr(bench_cli, "bench", lambda *a: pytest.fail("measured"))
    for where in ("/proc/x.json", "/nonexistent/folder/b.json", "/tmp"):
        code, _, err = call(bench_cli.main, ["--ckpt", tiny_ckpt, "--video", sample_video, "--frames", 2, "--json", where],
                            capsys)
        one_error(code, err, "--json")


@pytest.mark.skipif(not CPU_ONLY, reason="a CUDA device is present")
def test_bench_cuda_graph_on_cpu_fails_before_measuring(tiny_ckpt, sample_video, capsys, monkeypatch):
    monkeypatch.setattr(bench_cli, "bench", lambda *a: pytest.fail("measured"))
    code, _, err = call(bench_cli.main, ["--ckpt", tiny_ckpt, "--video", sample_video, "--frames", 2,
                                         "--decode-steps", "dynamic", "cuda-graph"], capsys)
    one_error(code, err, "--decode-steps cuda-graph", "CUDA")


def test_bench_keeps_the_rows_measured_before_a_failure(tiny_ckpt, sample_video, capsys, monkeypatch, tmp_path):
    calls = []

    def measure(rt, video, frames, *rest):
        calls.append(frames)
        if len(calls) > 1:
            raise ValueError("the second measurement failed")
        keys = [f for f in bench_cli.FIELDS if f not in ("frames", "decode_steps")]
        return {key: 1.0 for key in keys} | {"slow_tokens": 162, "fast_tokens": 162}

    monkeypatch.setattr(bench_cli, "measure", measure)
    out_file = tmp_path / "bench.json"
    code, out, err = call(bench_cli.main, ["--ckpt", tiny_ckpt, "--video", sample_video, "--frames", 2, 3,
                                           "--json", out_file], capsys)
    one_error(code, err, "the second measurement failed")
    assert "stopped after 1 measured rows" in err and out.strip().splitlines()[-1].split()[0] == "2"
    saved = json.loads(out_file.read_text())
    assert saved["partial"] and [r["frames"] for r in saved["results"]] == [2]


def test_jetson_memory_errors_are_one_line(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = call(jetson_memory.main, ["--manifest", tmp_path / "bad.json"], capsys)
    one_error(code, err, "--manifest", "JSON object")
    code, out, err = call(jetson_memory.main, ["--ckpt", tiny_ckpt, "--json", "/proc/x.json"], capsys)
    one_error(code, err, "--json")
    assert out == ""


def test_trt_lint_unreadable_file_is_one_line(tmp_path, capsys):
    from slowfast_trt.cli import trt_lint

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    code, _, err = call(trt_lint.main, [tmp_path / "x.onnx"], capsys)
    one_error(code, err, "x.onnx")


# -- the shell's view: closed pipes -----------------------------------------------------------


def _closed_stdout(argv, stdin=None, timeout=600):
    """Run a command whose stdout reader has gone (``... | head -0``): (status, stderr)."""
    read, write = os.pipe()
    os.close(read)  # every write to stdout now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", *map(str, argv)], stdout=write, stderr=subprocess.PIPE,
                              input=stdin, text=True, timeout=timeout)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("mode", ["plain", "stream", "interactive"])
def test_output_into_a_closed_pipe_is_quiet(mode, ask, tmp_path):
    extra = {"plain": [], "stream": ["--stream"], "interactive": ["--interactive"]}[mode]
    out_file = tmp_path / "answer.json"
    code, err = _closed_stdout(["slowfast_trt.run", *ask, "--json", out_file, *extra], stdin="And then?\n")
    assert code == 0 and "Traceback" not in err and "Error" not in err, err
    assert json.loads(out_file.read_text())  # the --json file is written all the same


def test_jetson_memory_into_a_closed_pipe_is_quiet(tiny_ckpt, tmp_path):
    code, err = _closed_stdout(["slowfast_trt.tools.jetson_memory", "--ckpt", tiny_ckpt, "--json", tmp_path / "m.json"])
    assert code == 0 and "Traceback" not in err, err
    assert json.loads((tmp_path / "m.json").read_text())["rows"]


# -- export folders -------------------------------------------------------------------------


def test_export_folders_follow_the_umask(tmp_path):
    from slowfast_trt.export.pipeline import make_stage

    umask = os.umask(0o022)
    try:
        stage = make_stage(tmp_path / "out")
    finally:
        os.umask(umask)
    assert stage.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("key", ["frames", "max_frames", "max_seq_len", "vocab_rows"])
def test_manifest_value_of_the_wrong_type_names_the_key(key, tiny_exports, sample_video, capsys, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_exports("tiny_ckpt"), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[key] = "sixty-four"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = call(run_cli.main, ["--engines", folder, "--video", sample_video, "--question", "q"], capsys)
    one_error(code, err, "manifest.json", f"'{key}'")
