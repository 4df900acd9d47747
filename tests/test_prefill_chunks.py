"""A prompt prefilled in chunks (``DecoderRunner.prefill``; ONNX Runtime on the CPU takes 512-row
chunks) answers as one prefill call: same greedy tokens, same first-token logits (fp32), with
chunk borders inside the video rows and inside the text, and a follow-up that reuses the cache."""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.runtime.decoder_runner import ORT_CPU_PREFILL_CHUNK, default_prefill_chunk
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.video import load_video

QUESTIONS = ("What is happening in this video?", "And then?")


def _answers(rt, frames, chunk):
    """[(token ids, prefill logits, prompt rows)] of each question, prefilled in ``chunk``-row calls."""
    out = []
    with rt.open_video(frames) as session:
        runner = session._runner
        runner.prefill_chunk = chunk
        prefill, seen = runner.prefill, []
        runner.prefill = lambda *args: seen.append(prefill(*args).clone()) or seen[-1]
        for question in QUESTIONS:
            result = session.ask(question, max_new_tokens=6)
            out.append((result.token_ids, seen[-1], result.prompt_tokens))
    return out


@pytest.fixture(scope="module")
def frames(sample_video):
    return load_video(sample_video, 8).frames


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_chunked_prefill_equals_one_call(backend, tiny_ckpt, tiny_exports, frames):
    source = tiny_ckpt if backend == "torch" else tiny_exports("tiny_ckpt")
    rt = SlowFastRuntime.load(str(source), backend=backend, device="cpu")
    whole = _answers(rt, frames, None)
    assert whole[0][2] > 600  # 8 frames: the video rows hold the borders at 7k and 333
    for chunk in (7, 333, 650):
        for (tokens, logits, _), (got_tokens, got_logits, _) in zip(whole, _answers(rt, frames, chunk)):
            assert got_tokens == tokens, chunk
            torch.testing.assert_close(got_logits, logits, rtol=1e-5, atol=1e-5 * float(logits.abs().max()))
    rt.close()


def test_chunks_only_where_attention_is_materialised():
    assert default_prefill_chunk("onnxruntime", torch.device("cpu")) == ORT_CPU_PREFILL_CHUNK
    assert default_prefill_chunk("onnxruntime", torch.device("cuda")) is None
    assert default_prefill_chunk("torch", torch.device("cpu")) is None
    assert default_prefill_chunk("tensorrt", torch.device("cuda")) is None
