"""CUDA-graph decode steps on the torch backend (GPU only; skipped at collection without CUDA).

The captured step must give the tokens and the KV cache of eager dynamic steps, in fp32, in
both decode modes, for follow-up questions (same binding, replayed) and a second video (new
binding, captured again). The TensorRT capture uses the same StaticDecodeStep around
``execute_async_v3``; it needs TensorRT and is not covered here.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.ops.cross_attention.eager import cross_attention_eager
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from test_runtime_torch import TURNS

pytestmark = pytest.mark.gpu
MAX_SEQ_LEN = 1600


def _conversation(rt, frames, mode):
    tokens, caches = [], []
    with rt.open_video(frames, decode_mode=mode) as session:
        for question, sampling in TURNS:
            tokens.append(session.ask(question, **sampling).token_ids)
            kv = session._kv
            caches.append([t[:, : kv.length].cpu() for t in kv.keys + kv.values])
    return tokens, caches


def test_cuda_graph_steps_equal_dynamic_steps(tiny_ckpt, sample_video):
    from slowfast_trt.video import load_video

    clips = [load_video(sample_video, 16).frames, load_video(sample_video, 16).frames[::-1].copy()]
    runtimes = {
        mode: SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cuda", max_seq_len=MAX_SEQ_LEN, decode_steps=mode)
        for mode in ("dynamic", "cuda-graph")
    }
    assert runtimes["cuda-graph"].info()["decode_steps"] == "cuda-graph"
    for clip in clips:
        for decode_mode in ("upstream", "attend"):
            want = _conversation(runtimes["dynamic"], clip, decode_mode)
            got = _conversation(runtimes["cuda-graph"], clip, decode_mode)
            assert got[0] == want[0], decode_mode
            for turn_got, turn_want in zip(got[1], want[1]):
                for a, b in zip(turn_got, turn_want):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    runner = runtimes["cuda-graph"]._runner
    assert runner._static.capture


def test_steps_replay_after_the_first(tiny_ckpt, sample_video):
    from slowfast_trt.video import load_video

    rt = SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cuda", max_seq_len=MAX_SEQ_LEN, decode_steps="cuda-graph")
    video = rt.encode_video(load_video(sample_video, 16).frames)
    with rt.open_video(video, decode_mode="attend") as session:
        session.ignore_stop_tokens = True
        session.ask("What is happening in this video?", max_new_tokens=10)
        (step,) = list(rt._runner._static._steps.values())
        # 10 tokens: the first from the prefill, 9 decode steps (one eager and captured, 8 replays)
        assert step.graph is not None and step.replays == 8


@pytest.mark.parametrize("n", [0, 5, 9])
def test_masked_cross_attention_on_cuda_equals_cpu(n):
    gen = torch.Generator().manual_seed(n)
    query = torch.randn(3, 4, 8, generator=gen)
    key, value = torch.randn(1, 2, 9, 8, generator=gen), torch.randn(1, 2, 9, 8, generator=gen)
    lengths, offsets = torch.tensor([n], dtype=torch.int32), torch.tensor([0, 3], dtype=torch.int32)
    want = cross_attention_eager(query, key, value, lengths, offsets)
    got = cross_attention_eager(*(t.cuda() for t in (query, key, value, lengths, offsets)))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
