"""LongVU through the shared runtime: ``SlowFastRuntime.load`` picks the family, torch and ONNX
Runtime give upstream's tokens, sessions reuse cached rows exactly where they are equal, and the
``run`` CLI (towers from an offline Hugging Face cache) writes the Slow-Fast JSON keys + kept frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from longvu_helpers import case_frames, golden, write_folders

GOLDEN = golden()
SLOWFAST_KEYS = {"text", "token_ids", "finish_reason", "frames", "slow_tokens", "fast_tokens", "prompt_tokens",
                 "timings_ms", "prefill_rows", "reused_rows", "backend", "history_note"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from slowfast_trt.export.longvu_pipeline import LongVUExportRequest, export_longvu_checkpoint

    root = tmp_path_factory.mktemp("longvu_runtime")
    folders = write_folders(root, hub=True)
    export_longvu_checkpoint(LongVUExportRequest(ckpt=str(folders["checkpoint"]), out=root / "export",
                                                 siglip=folders["siglip"], dino=folders["dino"]))
    folders["export"] = root / "export"
    return folders


def _runtime(assets, which: str):
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    if which == "export":
        return SlowFastRuntime.load(assets["export"], threads=1)
    return SlowFastRuntime.load(assets["checkpoint"], device="cpu", siglip=assets["siglip"], dino=assets["dino"])


@pytest.mark.parametrize("which", ["checkpoint", "export"])
@pytest.mark.parametrize("name", ["mix", "lowdrop"])
def test_runtime_picks_the_family_and_matches_upstream(assets, which, name):
    from slowfast_trt.runtime.longvu_runtime import LongVURuntime

    case = GOLDEN["cases"][name]
    with _runtime(assets, which) as rt:
        assert isinstance(rt, LongVURuntime) and rt.backend == ("onnxruntime" if which == "export" else "torch")
        result = rt.generate(case_frames(case), case["question"], max_new_tokens=len(case["generated_ids"]))
    assert result.token_ids == case["generated_ids"]
    out = result.to_json()
    assert SLOWFAST_KEYS <= set(out) and out["kept_frames"] == case["kept_frame_indices"]
    assert out["fast_tokens"] == case["visual_tokens"] and out["prompt_tokens"] == case["seq_len"]


def _from_scratch(rt, frames, turns, question, new_tokens):
    """The reference answer to ``question`` after ``turns``: the whole conversation prefilled at once."""
    from slowfast_trt.models.longvu.prompt import LongVUConversation
    from slowfast_trt.prompt import ChatTurn

    with rt.open_video(frames) as fresh:
        fresh.set_history(turns)  # what the server does with a request's earlier messages
        assert fresh.conversation.prompt_text() == LongVUConversation(
            turns=[ChatTurn(q, a) for q, a in turns]).prompt_text()
        result = fresh.ask(question, max_new_tokens=new_tokens)
        assert result.reused_rows == 0
        return result


@pytest.mark.parametrize("name", ["few", "mix12"])
def test_follow_up_equals_the_whole_history_from_scratch(assets, name):
    case = GOLDEN["cases"][name]
    frames = case_frames(case)
    with _runtime(assets, "checkpoint") as rt, rt.open_video(frames) as session:
        first = session.ask(case["question"], max_new_tokens=6)
        second = session.ask("What happens next?", max_new_tokens=6)
        want = _from_scratch(rt, frames, [(case["question"], first.text)], "What happens next?", 6)
        assert second.token_ids == want.token_ids and second.prompt_tokens == want.prompt_tokens
        assert second.reused_rows + second.prefill_rows == second.prompt_tokens
        # Selection and merge are redone for the longer prompt; the cache is kept only up to the
        # first row that differs: the system prompt at least, everything before the new turn when
        # the visual rows did not change (all high-resolution under budget: 'few').
        assert second.reused_rows >= case["placeholder_index"]
        if name == "few":
            assert second.reused_rows >= first.prompt_tokens
        assert session.video.tokens  # SigLIP + connector tokens cached per kept frame


def _write_mp4(path: Path, frames: np.ndarray, rate: str) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _cli(args, hf_home: Path, cwd: Path):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "slowfast_trt.run", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def clip(assets, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames = case_frames(GOLDEN["cases"]["mix"])  # 10 distinct 96x96 frames
    _write_mp4(path, np.repeat(frames, 2, axis=0), "2")  # 2 fps: frames 0, 2, 4, ... sampled
    return path


@pytest.mark.slow
def test_run_cli_on_the_upstream_layout_offline(assets, clip, tmp_path):
    out = tmp_path / "answer.json"
    done = _cli(["--ckpt", assets["checkpoint"], "--video", clip, "--question", "Describe this video in detail",
                 "--max-new-tokens", 4, "--json", out], assets["hf_home"], tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert SLOWFAST_KEYS | {"question", "decode_mode", "dtype", "kept_frames"} <= set(result)
    assert result["frames"] == 10 and result["kept_frame_indices"] == list(range(0, 20, 2))
    engines = _cli(["--engines", assets["export"], "--video", clip, "--question", "Describe this video in detail",
                    "--max-new-tokens", 4, "--json", tmp_path / "ort.json"], assets["hf_home"], tmp_path)
    assert engines.returncode == 0, engines.stderr
    assert json.loads((tmp_path / "ort.json").read_text())["token_ids"] == result["token_ids"]


def _main(args, capsys):
    """``slowfast_trt.run`` in this process (its error wrapper prints one line, returns 2)."""
    from slowfast_trt.cli.run import main

    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture()
def offline_hub(monkeypatch):
    from huggingface_hub import constants

    def use(hf_home):
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return use


def test_run_cli_bad_input(assets, clip, tmp_path, capsys, offline_hub):
    from slowfast_trt.fixtures.tiny_longvu import TinyLongVUSpec, write_tiny_vision_towers

    empty = tmp_path / "empty_hf"
    (empty / "hub").mkdir(parents=True)
    offline_hub(empty)
    base = ["--ckpt", assets["checkpoint"], "--question", "Describe it", "--max-new-tokens", 2]
    line = _main(base + ["--video", clip], capsys)
    assert "google/siglip-so400m-patch14-384" in line and "--siglip" in line
    offline_hub(assets["hf_home"])
    wrong = write_tiny_vision_towers(TinyLongVUSpec(siglip_hidden=32), directory=tmp_path / "wrong")
    assert "SigLIP tower of width 32" in _main(base + ["--video", clip, "--siglip", wrong["siglip"]], capsys)
    slow = tmp_path / "slow.mp4"
    _write_mp4(slow, case_frames(GOLDEN["cases"]["few"])[:2], "2/5")
    assert "rounds to 0" in _main(base + ["--video", slow], capsys)
    blank = tmp_path / "blank.mp4"
    _write_mp4(blank, np.zeros((0, 96, 96, 3), np.uint8), "2")
    assert "blank.mp4" in _main(base + ["--video", blank], capsys)
    assert "one frame per second" in _main(base + ["--video", clip, "--frames", 8], capsys)


def test_server_answers_with_longvu(assets, clip, tmp_path):
    """The OpenAI-compatible server over a LongVU runtime: an answer (1 fps sampling: no nframes), then
    a follow-up with history; the video cache counts a LongVU video's bytes."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
    from slowfast_trt.server.app import create_app
    from slowfast_trt.server.config import ServerConfig

    config = ServerConfig(media_dir=clip.parent, model_name="longvu", data_dir=tmp_path / "data")
    video = {"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file:{clip.name}"}},
                                         {"type": "text", "text": "Describe this video in detail"}]}
    with SlowFastRuntime.load(assets["export"], threads=1) as rt, TestClient(create_app(rt, config)) as client:
        first = client.post("/v1/chat/completions", json={"model": "longvu", "messages": [video], "max_tokens": 4})
        assert first.status_code == 200, first.text
        answer = first.json()["choices"][0]["message"]["content"]
        expected = rt.generate(str(clip), "Describe this video in detail", max_new_tokens=4).text
        assert answer == expected
        history = [video, {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
        second = client.post("/v1/chat/completions", json={"model": "longvu", "messages": history, "max_tokens": 3})
        assert second.status_code == 200, second.text
    from slowfast_trt.server.cache import state_bytes

    with SlowFastRuntime.load(assets["export"], threads=1) as rt:
        features = rt.encode_video(str(clip))
        assert state_bytes(features) == features.nbytes > features.siglip_pixels.nbytes
