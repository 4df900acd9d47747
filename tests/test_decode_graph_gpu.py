"""CUDA-graph decode steps on the torch backend (GPU only; skipped at collection without CUDA).

The captured step (embed -> decoder -> device sampling) must give the tokens and the KV cache
of eager dynamic steps (host sampling), in fp32, in both decode modes, for follow-up questions
(same binding, replayed) and a second video (new binding, captured again), for greedy turns;
a seeded sampled turn must be reproducible (CUDA's generator is not the host sampler's, see
runtime/device_sampling.py). The TensorRT capture uses the same StaticDecodeStep around
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
GREEDY_TURNS = [(q, s) for q, s in TURNS if not s.get("temperature")] + [("And then?", dict(max_new_tokens=6))]
SAMPLED = [(q, s) for q, s in TURNS if s.get("temperature")]


def _conversation(rt, frames, mode, turns=GREEDY_TURNS):
    tokens, caches = [], []
    with rt.open_video(frames, decode_mode=mode) as session:
        for question, sampling in turns:
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
        # A seeded sampled turn on the device: the same tokens every time (CUDA's generator).
        again = [_conversation(runtimes["cuda-graph"], clip, "attend", GREEDY_TURNS[:1] + SAMPLED)[0] for _ in range(2)]
        assert again[0] == again[1] and len(again[0][-1]) > 0
    runner = runtimes["cuda-graph"]._runner
    assert runner._static.capture and all(step.head is not None for step in runner._static._steps.values())


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


def test_device_sampler_on_cuda_equals_the_host_sampler_for_greedy_and_its_distribution():
    from slowfast_trt.runtime.device_sampling import DeviceSampler, sampling_program
    from slowfast_trt.sampling import SamplingParams, TokenSampler

    vocab, gen = 151646, torch.Generator().manual_seed(0)
    for params in (SamplingParams(), SamplingParams(repetition_penalty=1.3)):
        host, device = TokenSampler(params), DeviceSampler(vocab, torch.device("cuda"))
        device.load(params)
        ids = []
        for _ in range(20):
            logits = (torch.randn(1, vocab, generator=gen) * 4).half()
            want = host(logits[0], ids)
            device.sample(logits.cuda(), sampling_program(params, vocab))
            assert int(device.token) == want
            ids.append(want)
    # Sampling: empirical frequencies of many draws against the host's filtered probabilities.
    params = SamplingParams(temperature=0.8, top_k=30, top_p=0.9, seed=1)
    logits = torch.randn(1, 64, generator=gen) * 2
    scores = logits[0] / params.temperature
    scores = scores.masked_fill(scores < torch.topk(scores, 30).values[-1], float("-inf"))
    ordered, order = torch.sort(scores)
    remove = ordered.softmax(-1).cumsum(-1) <= 1 - params.top_p
    remove[-1] = False
    probs = scores.masked_fill(remove.scatter(0, order, remove), float("-inf")).softmax(-1)
    device = DeviceSampler(64, torch.device("cuda"))
    device.load(params)
    generator, counts, draws = torch.Generator(device="cuda").manual_seed(1), torch.zeros(64), 20000
    for _ in range(draws):
        device.noise.exponential_(generator=generator)
        device.sample(logits.cuda(), sampling_program(params, 64))
        counts[int(device.token)] += 1
    assert counts[probs == 0].sum() == 0
    assert (counts / draws - probs).abs().max() < 0.015


def test_the_sampler_replays_in_a_cuda_graph():
    from slowfast_trt.runtime.device_sampling import DeviceSampler, sampling_program
    from slowfast_trt.sampling import SamplingParams

    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=3)
    program = sampling_program(params, 5000)
    sampler, logits = DeviceSampler(5000, torch.device("cuda")), torch.randn(1, 5000, device="cuda")
    sampler.load(params)
    generator = torch.Generator(device="cuda").manual_seed(3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sampler.sample(logits, program)  # warm-up before capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sampler.sample(logits, program)
    for _ in range(5):
        sampler.noise.exponential_(generator=generator)
        noise, seen = sampler.noise.clone(), sampler.seen.clone()
        graph.replay()
        replayed = int(sampler.token)
        sampler.noise.copy_(noise)
        sampler.seen.copy_(seen)
        sampler.sample(logits, program)
        assert int(sampler.token) == replayed
