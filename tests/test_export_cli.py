"""``python -m slowfast_trt.export`` on the tiny checkpoint.

Most tests swap ``export_all`` for a fast stand-in (one hand-made ONNX graph with the custom
op, its function and external data) to test the CLI itself: manifest, copied files, refusal
of a non-empty folder, --force, and that a failure leaves nothing behind. The last tests run
the real exporter end to end and lint every graph it writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slowfast_trt import __version__
from slowfast_trt.cli import export as cli
from slowfast_trt.export import pipeline
from slowfast_trt.export.manifest import check_manifest, checkpoint_fingerprint, load_manifest
from slowfast_trt.export.trt_lint import lint_model

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"}


class ExportSpy:
    """Wraps the real ``subgraphs.export_all``: records its calls and, to test the clean-up, can
    fail after the real export has written its files (as a full disk would)."""

    def __init__(self, real, fail: bool = False):
        self.real = real
        self.fail = fail
        self.calls = []

    def __call__(self, model, out_dir, precision, frames, max_seq_len, progress=lambda msg: None):
        self.calls.append({"dtype": model.dtype, "precision": precision, "frames": frames, "max_seq_len": max_seq_len,
                           "vocab_rows": model.vocab_rows, "out_dir": Path(out_dir)})
        specs = self.real(model, out_dir, precision, frames, max_seq_len, progress=progress)
        if self.fail:
            raise ValueError("export failure after writing")
        return specs


@pytest.fixture()
def fake_export(monkeypatch):
    from slowfast_trt.export import subgraphs

    spy = ExportSpy(subgraphs.export_all)
    monkeypatch.setattr(subgraphs, "export_all", spy)
    return spy


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def base_args(ckpt, out, *extra):
    return ["--ckpt", ckpt, "--out", out, "--backend", "onnxruntime", "--precision", "fp32",
            "--frames", "16", "--max-seq-len", "2048", *extra]


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_export_writes_folder_and_manifest(tiny_ckpt, tmp_path, capsys, fake_export):
    out = tmp_path / "export"
    code, stdout, err = run_cli(capsys, *base_args(tiny_ckpt, out))
    assert code == 0, err
    assert "[export" in err and "[6/7] decoder" in err  # progress on stderr
    assert str(out) in stdout
    names = {p.name for p in out.iterdir()}
    graphs = {"vision.onnx", "projector.onnx", "fast_pool.onnx", "slow_kv.onnx", "decoder.onnx", "decoder_nocross.onnx",
              "embed_tokens.npy"}
    assert {"manifest.json", "config.json", "generation_config.json", "decoder.onnx.data"} | graphs <= names
    assert TOKENIZER_FILES <= names and "model.safetensors" not in names
    assert (out / "config.json").read_bytes() == (tiny_ckpt / "config.json").read_bytes()
    assert _leftovers(tmp_path) == []

    (call,) = fake_export.calls
    assert call["precision"] == "float32" and str(call["dtype"]) == "torch.float32"
    assert (call["frames"], call["max_seq_len"]) == (64, 2048)  # the graphs serve 1..64 (training frames)
    assert call["out_dir"].parent == tmp_path and call["out_dir"] != out  # staged beside --out

    manifest = load_manifest(out)
    check_manifest(manifest, __version__, ckpt_hash=checkpoint_fingerprint(tiny_ckpt))
    assert manifest["package_version"] == __version__
    assert manifest["source"]["checkpoint"] == str(tiny_ckpt) and "safetensors header" in manifest["source"]["hash_method"]
    assert (manifest["precision"], manifest["dtype"], manifest["frames"], manifest["max_seq_len"]) == ("fp32", "float32", 16, 2048)
    assert (manifest["max_frames"], manifest["frame_range"]) == (64, [1, 64])  # --frames 16 is the default count
    assert manifest["vocab_rows"] == call["vocab_rows"] < manifest["config"]["text"]["vocab_size"]
    assert manifest["visual_tokens"]["slow"] == 1296 and manifest["visual_tokens"]["fast"] == 1296
    assert manifest["config"]["derived"]["hybrid_layers"] == [0, 2]
    assert manifest["custom_op"] == {"name": "SlowFastCrossAttention", "domain": "slowfast_trt", "op_version": 2}
    assert manifest["layouts"]["kv_cache"]["layout"] == "[batch, seq, kv_heads, head_dim]"
    assert manifest["layouts"]["slow_kv"]["shape"] == ["batch", 2, 5184, 16]  # at most 64 frames x 81
    assert manifest["backend"] == "onnxruntime" and manifest["engines"] is None
    decoder = manifest["subgraphs"]["decoder"]
    assert decoder["inputs"][0] == {"name": "inputs_embeds", "shape": [1, "seq", 64], "dtype": "float32"}
    assert ["seq", 1, 2048] in decoder["dims"] and ["slow_tokens", 1, 5184] in decoder["dims"]
    assert decoder["data_file"] == "decoder.onnx.data" and "trt_file" not in decoder
    assert manifest["files"]["decoder.onnx"] == (out / "decoder.onnx").stat().st_size


def test_refuses_non_empty_output_and_force_replaces(tiny_ckpt, tmp_path, capsys, fake_export):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, out))
    assert code == 2 and "not empty" in _one_error(err) and "--force" in err
    assert (out / "keep.txt").read_text() == "user data" and not fake_export.calls

    # --force replaces previous exports only, never a folder of other files.
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, out, "--force"))
    assert code == 2 and "not an export folder" in _one_error(err)
    assert (out / "keep.txt").read_text() == "user data" and not fake_export.calls
    (out / "keep.txt").unlink()
    assert run_cli(capsys, *base_args(tiny_ckpt, out))[0] == 0
    (out / "stray.txt").write_text("from the old export")
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, out, "--force", "--frames", "32"))
    assert code == 0, err
    assert not (out / "stray.txt").exists() and load_manifest(out)["frames"] == 32
    assert _leftovers(tmp_path) == []
    # Never over the checkpoint itself, even one that holds a manifest.json.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "manifest.json").write_text("{}")
    code, _, err = run_cli(capsys, *base_args(ckpt, ckpt, "--force"))
    assert code == 2 and "must not be the checkpoint folder" in _one_error(err)
    assert (ckpt / "model.safetensors").is_file()
    # An existing empty folder is fine without --force.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, *base_args(tiny_ckpt, empty))[0] == 0


def test_failed_export_leaves_nothing_and_force_keeps_old(tiny_ckpt, tmp_path, capsys, fake_export):
    out = tmp_path / "export"
    fake_export.fail = True
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, out))
    assert code == 2 and _one_error(err) == "error: export failure after writing"
    assert not out.exists() and _leftovers(tmp_path) == []

    fake_export.fail = False
    assert run_cli(capsys, *base_args(tiny_ckpt, out))[0] == 0
    before = (out / "manifest.json").read_bytes()
    fake_export.fail = True
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, out, "--force"))
    assert code == 2 and "export failure after writing" in err
    assert (out / "manifest.json").read_bytes() == before, "the old export must survive a failed --force export"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--frames", "0"], "--frames must be an integer >= 1, got 0"),
        (["--frames", "65", "--max-frames", "64"], "--frames 65: exceeds --max-frames 64"),
        (["--max-seq-len", "1296"], "--max-seq-len 1296: must exceed the 1296 fast tokens"),
        (["--max-seq-len", "40000"], "exceeds max_position_embeddings 32768"),
    ],
)
def test_bad_arguments(tiny_ckpt, tmp_path, capsys, fake_export, extra, fragment):
    out = tmp_path / "export"
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, out), *extra)
    assert code == 2 and fragment in _one_error(err)
    assert not out.exists() and not fake_export.calls and _leftovers(tmp_path) == []


def test_frames_the_pooling_cannot_take(tiny_ckpt, tmp_path, capsys, fake_export):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["fast_token_spatial_stride"] = 16  # 9x9 pooled grid / 16 -> no fast tokens
    (ckpt / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, *base_args(ckpt, tmp_path / "out"))
    assert code == 2 and "--frames 16" in _one_error(err) and "fast_token_spatial_stride 16" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_and_missing_checkpoint(tiny_ckpt, tmp_path, capsys, fake_export):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = run_cli(capsys, *base_args(ckpt, tmp_path / "out"))
    assert code == 2 and "corrupt" in _one_error(err)
    code, _, err = run_cli(capsys, *base_args(tmp_path / "nowhere", tmp_path / "out"))
    assert code == 2 and "not found" in _one_error(err)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = run_cli(capsys, *base_args(ckpt, tmp_path / "out"))
    assert code == 2 and "model_type" in _one_error(err)
    assert not (tmp_path / "out").exists() and not fake_export.calls


def test_unwritable_output(tiny_ckpt, tmp_path, capsys, fake_export):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, blocker / "export"))
    assert code == 2 and "cannot write" in _one_error(err)
    code, _, err = run_cli(capsys, *base_args(tiny_ckpt, blocker))
    assert code == 2 and "not a folder" in _one_error(err)


def test_tensorrt_missing_fails_before_writing(tiny_ckpt, tmp_path, capsys, fake_export, monkeypatch):
    monkeypatch.setattr(pipeline, "tensorrt_missing", lambda: "ModuleNotFoundError: No module named 'tensorrt'")
    out = tmp_path / "export"
    args = ["--ckpt", tiny_ckpt, "--out", out, "--frames", "16"]  # --backend tensorrt is the default
    code, _, err = run_cli(capsys, *args)
    line = _one_error(err)
    assert code == 2 and line.startswith("error: TensorRT is not installed: ")
    assert line.endswith("use --onnx-only or --backend onnxruntime")
    assert not out.exists() and not fake_export.calls and _leftovers(tmp_path) == []
    code, _, err = run_cli(capsys, "--ckpt", tiny_ckpt, "--out", out, "--backend", "onnxruntime", "--onnx-only")
    assert code == 2 and "--onnx-only goes with --backend tensorrt" in err


def test_tensorrt_onnx_only_strips_and_lints(tiny_ckpt, tmp_path, capsys, fake_export):
    out = tmp_path / "export"
    code, _, err = run_cli(capsys, "--ckpt", tiny_ckpt, "--out", out, "--backend", "tensorrt", "--onnx-only",
                           "--precision", "fp16", "--frames", "32", "--max-seq-len", "4096")
    assert code == 0, err
    manifest = load_manifest(out)
    assert manifest["backend"] == "tensorrt" and manifest["engines"] is None
    assert manifest["subgraphs"]["decoder"]["trt_file"] == "decoder.trt.onnx"
    assert "trt_file" not in manifest["subgraphs"]["embed"]
    assert manifest["trt_lint"] == {name: [] for name in ("vision", "projector", "fast_pool", "slow_kv", "decoder",
                                                          "decoder_nocross")}
    assert manifest["visual_tokens"]["slow"] == 2592 and manifest["visual_tokens"]["fast"] == 1296
    assert lint_model(out / "decoder.trt.onnx") == []
    assert len(lint_model(out / "decoder.onnx")) == 1  # the function, kept for ONNX Runtime


@pytest.mark.parametrize("frames, slow, fast", [(1, 324, 324), (16, 1296, 1296), (32, 2592, 1296), (64, 5184, 1296), (96, 7776, 1944)])
def test_visual_token_counts_match_the_released_model(tiny_ckpt, frames, slow, fast):
    from slowfast_trt.models.slowfast.config import SlowFastConfig
    from slowfast_trt.models.slowfast.specs import fast_token_count

    config = SlowFastConfig.from_file(tiny_ckpt / "config.json")
    counts = pipeline.visual_token_counts(frames, config, 18)
    assert (counts["slow"], counts["fast"]) == (slow, fast)
    assert fast_token_count(config, frames) == fast


# ---- the real exporter ----------------------------------------------------------------------


def _real_exporter_or_skip():
    try:
        from slowfast_trt.export.subgraphs import export_all
    except ImportError as exc:  # the exporter is developed alongside this CLI
        pytest.skip(f"slowfast_trt.export.subgraphs not available: {exc}")


def test_real_export_tensorrt_onnx_only_lints_clean(tiny_ckpt, tmp_path):
    _real_exporter_or_skip()
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "slowfast_trt.export", "--ckpt", str(tiny_ckpt), "--out", str(out), "--backend", "tensorrt",
         "--onnx-only", "--precision", "fp32", "--frames", "16", "--max-seq-len", "2048"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(out)
    check_manifest(manifest, __version__, ckpt_hash=checkpoint_fingerprint(tiny_ckpt))
    onnx_graphs = {name: entry for name, entry in manifest["subgraphs"].items() if entry["file"].endswith(".onnx")}
    assert {"vision", "projector", "fast_pool", "slow_kv", "decoder"} <= set(onnx_graphs)
    for name, entry in onnx_graphs.items():
        assert (out / entry["file"]).is_file() and (out / entry["trt_file"]).is_file()
        assert manifest["trt_lint"][name] == [], (name, manifest["trt_lint"][name])
        assert lint_model(out / entry["trt_file"]) == []
        if entry.get("data_file"):
            assert (out / entry["data_file"]).is_file()
    assert set(manifest["files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}


def test_bf16_needs_tensorrt(tiny_ckpt, tmp_path, capsys, fake_export):
    out = tmp_path / "export"
    args = ["--ckpt", tiny_ckpt, "--out", out, "--backend", "onnxruntime", "--precision", "bf16", "--frames", "16"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--precision bf16 needs --backend tensorrt" in _one_error(err)
    assert not out.exists() and not fake_export.calls


def test_int4_awq_export_runs_in_onnx_runtime(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "export"
    code, _, err = run_cli(capsys, "--ckpt", tiny_ckpt, "--out", out, "--backend", "onnxruntime",
                           "--precision", "int4-awq", "--frames", "16", "--max-seq-len", "2048")
    assert code == 0, err
    manifest = load_manifest(out)
    assert (manifest["precision"], manifest["dtype"]) == ("int4-awq", "float32")
    report = json.loads((out / "quantization.json").read_text())
    assert report["awq"]["method"] == "awq" and report["bytes_after"] < report["bytes_before"]
    from slowfast_trt import SlowFastRuntime

    rt = SlowFastRuntime.load(out, backend="onnxruntime")
    result = rt.generate(video=None, question="Tell me about cats.", max_new_tokens=4)
    assert len(result.token_ids) > 0
