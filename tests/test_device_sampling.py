"""Device-side sampling equals the host sampler (CPU tensors), and the decode loop drives it right.

``DeviceSampler`` must give exactly ``TokenSampler``'s tokens: greedy always, and seeded
sampling (temperature, top-k, top-p, repetition penalty) when its generator is the host's kind
(CPU here; on CUDA the generator is Philox: same distribution, other numbers, see
tests/test_device_sampling_gpu.py). ``decode_loop`` with ``DeviceSteps`` must yield the tokens,
finish reasons and cache length of the host-sampled loop, undoing the one step it queued ahead.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.generation import DecodeOutcome, decode_loop
from slowfast_trt.runtime.device_sampling import DecodeHead, DeviceSampler, DeviceSteps, sampling_program
from slowfast_trt.sampling import SamplingParams, TokenSampler

VOCAB = 997
PARAMS = [
    SamplingParams(),
    SamplingParams(repetition_penalty=1.3),
    SamplingParams(repetition_penalty=0.7),
    SamplingParams(temperature=0.7, seed=1),
    SamplingParams(temperature=1.0, top_k=20, seed=2),
    SamplingParams(temperature=1.3, top_p=0.8, seed=3),
    SamplingParams(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2, seed=4),
    SamplingParams(temperature=0.5, top_k=VOCAB + 5, top_p=0.5, seed=5),  # top_k beyond the vocabulary: off
    SamplingParams(temperature=2.0, top_p=0.3, repetition_penalty=1.5, seed=None),
]


def _logits(gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    logits = torch.randn(1, VOCAB, generator=gen) * 4
    logits[0, :40] = logits[0, 40:80]  # ties: both samplers must break them the same way
    return logits.to(dtype)


@pytest.mark.parametrize("params", PARAMS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_device_sampler_gives_the_host_samplers_tokens(params, dtype):
    if params.seed is None:  # an unseeded host sampler cannot be replayed: seed both the same way
        params = SamplingParams(**{**params.__dict__, "seed": 11})
    host = TokenSampler(params)
    device = DeviceSampler(VOCAB, torch.device("cpu"))
    device.load(params)
    generator = torch.Generator().manual_seed(params.seed)
    program = sampling_program(params, VOCAB)
    gen, ids = torch.Generator().manual_seed(7), []
    for _ in range(40):
        logits = _logits(gen, dtype)
        want = host(logits[0], ids)
        if not params.greedy:
            device.noise.exponential_(generator=generator)
        device.sample(logits, program)
        assert int(device.token) == want
        ids.append(want)
    assert device.seen.nonzero().flatten().tolist() == sorted(set(ids))


def test_the_program_is_the_shape_of_the_computation():
    assert sampling_program(SamplingParams(), VOCAB) == (True, 0, False, False)
    assert sampling_program(SamplingParams(top_k=5, top_p=0.5), VOCAB) == (True, 0, False, False)  # greedy ignores them
    assert sampling_program(SamplingParams(temperature=1, top_k=5, top_p=0.5, repetition_penalty=2), VOCAB) == (
        False, 5, True, True)
    assert sampling_program(SamplingParams(temperature=1, top_k=VOCAB), VOCAB) == (False, 0, False, False)


class ToyCache:
    """The KV cache as DeviceSteps sees it: a length and commit."""

    def __init__(self, length: int):
        self.length = length

    def commit(self, rows: int) -> None:
        self.length += rows


class ToyModel:
    """Logits that depend on the embedded token only: a 'decoder' over a one-hot table."""

    def __init__(self, seed: int = 0):
        self.table = torch.eye(VOCAB)[:, :64].contiguous()  # (V, 64) embeddings, token t -> e_t (t < 64)
        self.mix = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
        self.bias = torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed + 1))

    def logits_of(self, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding.reshape(1, -1) @ self.mix + self.bias)

    def host_step(self, token: int) -> torch.Tensor:
        return self.logits_of(self.table[token])[0]


def _device_steps(model: ToyModel, kv: ToyCache, sampler: DeviceSampler, finished: list):
    embeds, logits = torch.zeros(1, 1, 64), torch.zeros(1, VOCAB)

    def run_step(head):  # what DecoderRunner._static_step does around the decoder (it does not commit)
        head.embed()
        logits.copy_(model.logits_of(embeds))
        head.sample()

    return DeviceSteps(sampler, lambda program: DecodeHead(model.table, embeds, logits, sampler, program), run_step, kv,
                       on_step=finished.append)


class Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)


@pytest.mark.parametrize("params, stops", [
    (SamplingParams(max_new_tokens=12), set()),
    (SamplingParams(max_new_tokens=1), set()),
    (SamplingParams(max_new_tokens=30, temperature=1.0, top_k=8, seed=3), set()),
    (SamplingParams(max_new_tokens=30, temperature=1.2, top_p=0.9, repetition_penalty=1.3, seed=4), "third"),
    (SamplingParams(max_new_tokens=30, temperature=1.2, seed=5, stop_strings=("t1",)), set()),
])
def test_the_decode_loop_on_device_steps_equals_the_host_loop(params, stops):
    model, first = ToyModel(), torch.randn(VOCAB, generator=torch.Generator().manual_seed(9))
    host_outcome, host_kv = DecodeOutcome(), ToyCache(100)

    def host_step(token):
        host_kv.length += 1
        return model.host_step(token)

    host = list(decode_loop(first, host_step, params, set(), Tokenizer(), {}, host_outcome))
    if stops == "third":  # stop at the third token of the unstopped run
        stops = {host[2]}
        host_outcome, host_kv = DecodeOutcome(), ToyCache(100)
        host = list(decode_loop(first, host_step, params, stops, Tokenizer(), {}, host_outcome))
    kv, finished = ToyCache(100), []
    outcome, timings = DecodeOutcome(), {}
    steps = _device_steps(model, kv, DeviceSampler(VOCAB, torch.device("cpu")), finished)
    got = list(decode_loop(first, None, params, stops, Tokenizer(), timings, outcome, device=steps))
    assert got == host and outcome.reason == host_outcome.reason
    assert kv.length == host_kv.length  # the step queued ahead of the last token was never committed
    assert finished == got[:kv.length - 100]  # each committed row with the token it consumed
    assert "ttft_ms" in timings


def test_an_abandoned_stream_leaves_the_step_queued_ahead_uncommitted():
    model, kv, finished = ToyModel(), ToyCache(50), []
    steps = _device_steps(model, kv, DeviceSampler(VOCAB, torch.device("cpu")), finished)
    loop = decode_loop(torch.randn(VOCAB), None, SamplingParams(max_new_tokens=20), set(), Tokenizer(), {},
                       DecodeOutcome(), device=steps)
    first_three = [next(loop) for _ in range(3)]
    assert kv.length == 52 and finished == first_three[:2]  # steps of tokens 1 and 2; token 3's is queued
    loop.close()  # the consumer stops reading after three tokens (maybe much later: nothing changes then)
    assert kv.length == 52 and finished == first_three[:2]


def test_interleaved_generations_keep_their_own_sampler_state():
    """Two streams read in turns share one sampler's buffers: each must see only its own tokens."""
    model, sampler = ToyModel(), DeviceSampler(VOCAB, torch.device("cpu"))
    params = [SamplingParams(max_new_tokens=10, temperature=1.0, repetition_penalty=3.0, seed=s) for s in (1, 2)]
    firsts = [torch.randn(VOCAB, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    want = [list(decode_loop(f, model.host_step, p, set(), Tokenizer(), {}, DecodeOutcome())) for f, p in zip(firsts, params)]
    loops = [decode_loop(f, None, p, set(), Tokenizer(), {}, DecodeOutcome(),
                         device=_device_steps(model, ToyCache(0), sampler, []))
             for f, p in zip(firsts, params)]
    got = [[], []]
    for _ in range(10):
        for i in (0, 1):
            got[i].append(next(loops[i]))
    assert got == want
