"""Issue 11, ``run --demo``: it says what it is (question, video, where the checkpoint and export
are, random weights, what to run next) and rebuilds a damaged cache instead of failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from slowfast_trt.cli import demo
from slowfast_trt.cli import run as run_cli
from slowfast_trt.fixtures.sample_video import write_sample_video


@pytest.fixture
def demo_root(tmp_path, monkeypatch, tiny_ckpt, tiny_exports):
    """A demo cache in tmp_path (a copy of the session's export of the same tiny checkpoint);
    a re-export copies that export again instead of exporting (the real one: test_demo_assets)."""
    root = tmp_path / "demo"
    paths = demo.demo_paths(root)
    shutil.copytree(tiny_ckpt, paths["ckpt"])
    write_sample_video(paths["video"], num_frames=48)
    good = tiny_exports("tiny_ckpt")
    shutil.copytree(good, paths["export"])
    exports = []

    def ensure_demo_export(root=None, progress=print):
        out = demo.demo_paths(root)["export"]
        if not out.exists():
            exports.append(out)
            progress(f"exporting the demo checkpoint to {out} ...")
            shutil.copytree(good, out)
        return out

    monkeypatch.setattr(demo, "DEFAULT_ROOT", root)
    monkeypatch.setattr(demo, "ensure_demo_export", ensure_demo_export)
    return paths, exports


def _demo(capsys):
    code = run_cli.main(["--demo", "--frames", "2", "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_demo_explains_itself(demo_root, capsys):
    paths, _ = demo_root
    code, out, err = _demo(capsys)
    assert code == 0 and out.strip()  # stdout: the answer only
    for words in ("question:   What is happening in this video?", f"video:      {paths['video']}",
                  f"checkpoint: {paths['ckpt']}", "RANDOM weights", "noise", f"export:     {paths['export']}",
                  "next:", "slowfast_trt.export --ckpt", "slowfast_trt.run --engines", "slowfast_trt.bench"):
        assert words in err, words


@pytest.mark.parametrize("damage", ["truncated graph data", "deleted tokenizer", "corrupt video", "garbage manifest"])
def test_a_damaged_cache_is_rebuilt(damage, demo_root, capsys):
    paths, exports = demo_root
    export = paths["export"]
    if damage == "truncated graph data":
        data = export / "decoder.onnx.data"
        data.write_bytes(data.read_bytes()[:1000])
    elif damage == "deleted tokenizer":
        (export / "tokenizer.json").unlink()
    elif damage == "corrupt video":
        paths["video"].write_bytes(b"not a video" * 100)
    else:
        (export / "manifest.json").write_text("{")
    code, out, err = _demo(capsys)
    assert code == 0 and out.strip(), err
    assert f"the demo cache {paths['root']} is damaged" in err and "rebuilding it" in err
    assert "rebuild it with" not in err
    if damage != "corrupt video":
        assert exports == [export]


@pytest.mark.slow
def test_demo_end_to_end_rebuilds_its_own_cache(tmp_path):
    """The README's command in a fresh home: made once, damaged, rebuilt by itself."""
    env = {**os.environ, "HOME": str(tmp_path)}
    command = [sys.executable, "-m", "slowfast_trt.run", "--demo", "--frames", "2", "--max-new-tokens", "2"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0 and first.stdout.strip(), first.stderr
    data = tmp_path / ".cache" / "slowfast_trt" / "demo" / "tiny-slowfast-onnx-16f" / "vision.onnx.data"
    data.write_bytes(b"\0" * 10)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0 and second.stdout.strip(), second.stderr
    assert "is damaged" in second.stderr and "Traceback" not in second.stderr
