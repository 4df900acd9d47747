"""SlowFastRuntime on ONNX Runtime (CPU) from exported folders: token parity with the reference,
follow-ups, IO binding into the KV cache, memory, bad export folders and the CLIs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from slowfast_trt.models.slowfast.reference import ReferenceGenerator
from slowfast_trt.runtime.decoder_runner import ORT_CPU_PREFILL_CHUNK
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.video import load_video
from test_runtime_torch import CASES, TURNS, _rss_mb, check_conversation

MAX_SEQ_LEN = 1600


@pytest.fixture(scope="module")
def exports(tiny_exports):
    """(ckpt fixture name, frames) -> its one export folder (every frame count 1..64; the
    session-wide default export of conftest, max_seq_len 1600)."""
    return lambda name, frames=None: tiny_exports(name)


@pytest.fixture(scope="module")
def clips(sample_video):
    return {n: load_video(sample_video, n).frames for n in (8, 16, 32)}


@pytest.fixture(scope="module")
def references(request):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ReferenceGenerator.load(request.getfixturevalue(name))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def runtimes(exports):
    cache = {}

    def get(name, frames=None):
        if name not in cache:
            cache[name] = SlowFastRuntime.load(exports(name), threads=1)
        return cache[name]

    return get


@pytest.mark.parametrize("ckpt,frames", CASES)
def test_tokens_and_followups_match_the_reference(ckpt, frames, runtimes, references, clips):
    rt, reference = runtimes(ckpt, frames), references(ckpt)
    assert (rt.backend, rt.max_frames, str(rt.device)) == ("onnxruntime", 64, "cpu")  # one export, any count
    encoded = reference.encode_video(clips[frames])
    video = rt.encode_video(clips[frames])
    for mode in ("upstream", "attend"):
        check_conversation(rt, reference, encoded, video, mode)


def test_vision_in_chunks_gives_the_same_tokens(exports, references, clips):
    rt = SlowFastRuntime.load(exports("tiny_ckpt", 16), threads=1, vision_batch=5)  # chunks 5, 5, 5, 1
    reference = references("tiny_ckpt")
    expected = reference.generate(TURNS[2][0], reference.encode_video(clips[16]), SamplingParams(**TURNS[2][1]))
    assert rt.generate(clips[16], TURNS[2][0], **TURNS[2][1]).token_ids == expected.token_ids


def test_text_only_and_stream(runtimes, references, clips, sample_video):
    rt, reference = runtimes("tiny_ckpt", 16), references("tiny_ckpt")
    got = rt.generate(None, "Tell me a story about a cat.", max_new_tokens=6)
    assert got.token_ids == reference.generate("Tell me a story about a cat.", None, SamplingParams(max_new_tokens=6)).token_ids
    stream = rt.stream(sample_video, TURNS[0][0], frames=16, max_new_tokens=8, temperature=1.0, seed=4)
    assert "".join(stream) == stream.result.text and stream.result.frames == 16  # sampled exactly 16 frames


def test_decode_steps_write_the_kv_cache_in_place(runtimes, clips):
    rt = runtimes("tiny_ckpt", 16)
    calls = []
    for name in ("decoder", "decoder_nocross"):
        engine = rt._model.engines[name]
        original = engine.run

        def spy(feeds, outputs=None, _run=original, _engine=engine):
            calls.append((_engine, feeds, outputs))
            return _run(feeds, outputs)

        engine.run = spy
    try:
        with rt.open_video(clips[16], decode_mode="attend") as session:
            kv = session._kv
            pointers = [t.data_ptr() for t in kv.keys + kv.values]
            result = session.ask(TURNS[0][0], max_new_tokens=6)
            assert [t.data_ptr() for t in kv.keys + kv.values] == pointers
    finally:
        for name in ("decoder", "decoder_nocross"):
            del rt._model.engines[name].run
    row_bytes = kv.keys[0][0, 0].numel() * kv.keys[0].element_size()
    chunks = -(-result.prompt_tokens // ORT_CPU_PREFILL_CHUNK)
    assert chunks > 1 and len(calls) == chunks + 5  # the prefill's chunks + 5 decode steps
    for engine, feeds, outputs in calls:
        assert set(outputs) == set(engine.output_names)  # every output bound to a caller buffer
        past = feeds["past_key_1"].shape[1]
        if past:  # (an empty view has no address; the engine binds a dummy one)
            assert feeds["past_key_1"].data_ptr() == kv.keys[1].data_ptr()  # the past is read where it lives
        assert outputs["new_value_3"].data_ptr() == kv.values[3].data_ptr() + past * row_bytes  # rows land at [P:P+L]


def test_host_memory_stays_flat(runtimes, clips):
    rt = runtimes("tiny_ckpt", 16)
    video = rt.encode_video(clips[16])
    rss = []
    with rt.open_video(video) as session:
        for i in range(100):
            if i % 2:
                rt.generate(None, "Tell me a story about a cat.", max_new_tokens=3)
            else:
                session.reset()
                session.ask(TURNS[0][0], max_new_tokens=3)
            if i % 25 == 24:
                rss.append(_rss_mb())
    assert max(rss[1:]) - rss[0] < 8, rss


def test_bad_input(runtimes, exports, clips, tiny_ckpt_pool3d, tmp_path):
    rt = runtimes("tiny_ckpt", 16)
    too_many = clips[32][[i % 32 for i in range(65)]]
    with pytest.raises(ValueError, match=r"video has 65 frames but the engines serve 1\.\.64 frames.*--max-frames 65"):
        rt.open_video(too_many)
    with pytest.raises(ValueError, match=r"video has 65 frames but the engines in .* serve 1\.\.64 frames"):
        rt.open_video("any.mp4", frames=65)
    with rt.open_video(clips[16]) as session:
        first = session.ask(TURNS[0][0], max_new_tokens=4)
        with pytest.raises(ValueError, match=f"exceeds the maximum sequence length {MAX_SEQ_LEN}"):
            session.ask(TURNS[1][0], max_new_tokens=MAX_SEQ_LEN)
        assert session.ask(TURNS[1][0], max_new_tokens=4).reused_rows == first.prompt_tokens  # still usable
    source = exports("tiny_ckpt", 16)
    with pytest.raises(ValueError, match="export made from checkpoint sha256:"):
        SlowFastRuntime.load(source, checkpoint=tiny_ckpt_pool3d)
    with pytest.raises(ValueError, match="TensorRT engines|TensorRT is not available"):
        SlowFastRuntime.load(source, backend="tensorrt")
    with pytest.raises(ValueError, match="backend 'torch' runs a checkpoint"):
        SlowFastRuntime.load(source, backend="torch")
    for case, (edit, match) in BROKEN.items():
        broken = tmp_path / case.replace(" ", "_")
        shutil.copytree(source, broken)
        edit(broken, exports)
        with pytest.raises(ValueError, match=match):
            SlowFastRuntime.load(broken)


def _edit_manifest(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


BROKEN = {
    "missing engine file": (lambda d, e: (d / "decoder.onnx.data").unlink(), "decoder.onnx.data is missing"),
    "other version": (lambda d, e: _edit_manifest(d, package_version="0.0.1"), "export made by slowfast_trt 0.0.1"),
    "other checkpoint": (
        lambda d, e: shutil.copy(e("tiny_ckpt_pool3d", 16) / "manifest.json", d / "manifest.json"),
        "bytes, manifest.json says|does not match the manifest",
    ),
    "no manifest": (lambda d, e: (d / "manifest.json").unlink(), "not an export folder"),
}


def test_run_cli_with_engines(exports, sample_video, tmp_path, capsys):
    from slowfast_trt.cli import run

    source = exports("tiny_ckpt", 16)
    out = tmp_path / "out.json"
    assert run.main(["--engines", str(source), "--video", str(sample_video), "--question", TURNS[0][0], "--frames", "16",
                     "--max-new-tokens", "4", "--stream", "--json", str(out), "--threads", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["backend"] == "onnxruntime" and data["frames"] == 16 and len(data["token_ids"]) == 4
    assert data["text"] in capsys.readouterr().out
    # Interactive: follow-ups from stdin; a bad line is one error line and the session goes on.
    args = run.build_parser().parse_args(["--engines", str(source), "--video", str(sample_video), "--interactive",
                                          "--frames", "16", "--max-new-tokens", "3", "--json", str(out)])
    lines = iter([TURNS[0][0] + "\n", "<image>\n", TURNS[1][0] + "\n"])
    assert run.interactive(args, stdin=lines) == 2
    answers = json.loads(out.read_text())
    assert [a["question"] for a in answers] == [TURNS[0][0], TURNS[1][0]] and answers[1]["reused_rows"] > 1000
    assert "error: question contains '<image>'" in capsys.readouterr().err
    base = ["--engines", str(source), "--video", str(sample_video), "--question", "q"]
    for extra, expected in ((["--frames", "65"], "serve 1..64 frames"),
                            (["--max-new-tokens", "5000"], f"exceeds the maximum sequence length {MAX_SEQ_LEN}")):
        assert run.main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    # A bad export folder: one line, exit status 2 (in a fresh process: nothing else on stderr).
    proc = subprocess.run([sys.executable, "-m", "slowfast_trt.run", "--engines", str(tmp_path / "none"), "--video",
                           str(sample_video), "--question", "q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: --engines {tmp_path / 'none'}: export folder not found"]


def test_bench_with_export_folders(exports, sample_video, tmp_path, capsys):
    from slowfast_trt.tools import bench

    root = exports("tiny_ckpt")  # one export for every frame count
    out = tmp_path / "bench.json"
    assert bench.main(["--engines", str(root), "--video", str(sample_video), "--frames", "16", "32",
                       "--new-tokens", "4", "--runs", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["backend"] == "onnxruntime" and [r["frames"] for r in data["results"]] == [16, 32]
    assert [r["slow_tokens"] for r in data["results"]] == [1296, 2592]
    assert "upstream-style baseline" in capsys.readouterr().out
    assert data["results"][0]["decode_steps"] == "dynamic" and data["decode_steps_ratios"] == []  # auto on CPU
    # Two decode-step modes side by side: every frame count measured with each, ratios to the first.
    assert bench.main(["--engines", str(root), "--video", str(sample_video), "--frames", "16",
                       "--decode-steps", "dynamic", "static", "--new-tokens", "3", "--runs", "1", "--warmup", "0",
                       "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["frames"], r["decode_steps"]) for r in data["results"]] == [(16, "dynamic"), (16, "static")]
    (ratio,) = data["decode_steps_ratios"]
    assert (ratio["decode_steps"], ratio["versus"]) == ("static", "dynamic") and ratio["ms_per_token_ratio"] > 0
    assert "16 frames, static over dynamic" in capsys.readouterr().out
    assert bench.main(["--engines", str(root), "--video", str(sample_video), "--frames", "16",
                       "--decode-steps", "cuda-graph"]) == 2  # on CPU: one line, exit 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert bench.main(["--engines", str(root), "--video", str(sample_video), "--frames", "65"]) == 2
    assert "no export serves 65 frames (exports found for 1..64)" in capsys.readouterr().err
