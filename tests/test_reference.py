"""Reference generator: determinism, every path matters, text-only and repeated videos, sampling."""

import copy

import numpy as np
import pytest
import torch

from slowfast_trt.models.slowfast.reference import EncodedVideo, ReferenceGenerator
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.video import load_video

QUESTION = "What is happening in this video?"


@pytest.fixture(scope="module")
def frames16(sample_video):
    return load_video(sample_video, 16)


@pytest.fixture(scope="module")
def encoded16(reference, frames16):
    return reference.encode_video(frames16)


def test_greedy_is_deterministic(reference, encoded16):
    a = reference.generate(QUESTION, encoded16, SamplingParams(max_new_tokens=10))
    b = reference.generate(QUESTION, encoded16, SamplingParams(max_new_tokens=10))
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0
    assert (a.frames, a.slow_tokens, a.fast_tokens) == (16, 1296, 1296)


def _prefill_logits(gen: ReferenceGenerator, encoded: EncodedVideo, question=QUESTION):
    from slowfast_trt.prompt import Conversation
    from slowfast_trt.models.slowfast.sequence import SequenceLayout

    conv = Conversation(has_video=encoded is not None)
    conv.add_question(question)
    prompt = gen.prompt_for(conv)
    layout = SequenceLayout.of(prompt, int(encoded.visual.fast.shape[0]) if encoded else 0)
    with torch.inference_mode():
        logits, _ = gen._prefill(prompt, layout, encoded)
    return logits


def test_every_path_changes_the_output(reference, encoded16, frames16):
    base = _prefill_logits(reference, encoded16)
    # slow tokens (cross-attention only)
    slow_kv = reference.model.compute_slow_kv(encoded16.visual.slow + 0.5 * torch.randn_like(encoded16.visual.slow))
    assert (base - _prefill_logits(reference, EncodedVideo(encoded16.visual, slow_kv, {}))).abs().max() > 1e-2
    # fast tokens (in the prompt)
    visual = type(encoded16.visual)(encoded16.visual.slow, encoded16.visual.fast.flip(0), 16)
    assert (base - _prefill_logits(reference, EncodedVideo(visual, encoded16.slow_kv, {}))).abs().max() > 1e-2
    # the gate: upstream's initial warm-up value (0) silences the slow path
    silenced = ReferenceGenerator(copy.deepcopy(reference.model), reference.tokenizer)
    for i in silenced.model.decoder.hybrid_layer_ids:
        silenced.model.decoder.layers[i].cross.warmup_gate.data.zero_()
    assert (base - _prefill_logits(silenced, encoded16)).abs().max() > 1e-2
    # the pixels (vision tower and projector)
    other = reference.encode_video(np.ascontiguousarray(frames16.frames[::-1]))
    assert (base - _prefill_logits(reference, other)).abs().max() > 1e-2


def _first_decode_logits(gen: ReferenceGenerator, encoded: EncodedVideo):
    from slowfast_trt.prompt import Conversation
    from slowfast_trt.models.slowfast.sequence import SequenceLayout, continuation_attend_mask

    conv = Conversation()
    conv.add_question(QUESTION)
    prompt = gen.prompt_for(conv)
    layout = SequenceLayout.of(prompt, int(encoded.visual.fast.shape[0]))
    with torch.inference_mode():
        logits, cache = gen._prefill(prompt, layout, encoded)
        token = gen.model.embed_tokens(logits.argmax()[None, None])
        attend = continuation_attend_mask(1, True, gen.rows_attend_in_decode)
        return gen._step(token, torch.tensor([[layout.length]]), cache, encoded, attend)[0]


def test_decode_modes_differ(tiny_ckpt, encoded16):
    upstream = ReferenceGenerator.load(tiny_ckpt, decode_mode="upstream")
    attend = ReferenceGenerator.load(tiny_ckpt, decode_mode="attend")
    delta = (_first_decode_logits(upstream, encoded16) - _first_decode_logits(attend, encoded16)).abs().max()
    assert delta > 1e-2  # generated tokens reading the slow K/V change the logits
    with pytest.raises(ValueError, match="unsupported decode mode"):
        ReferenceGenerator(upstream.model, upstream.tokenizer, decode_mode="always")


def test_text_only_prompt_and_prompt_after_a_video(reference, encoded16, sample_video):
    first = reference.generate("Tell me a story about a cat.", None, SamplingParams(max_new_tokens=6))
    assert first.slow_tokens == 0 and first.fast_tokens == 0 and len(first.token_ids) > 0
    other = reference.encode_video(load_video(sample_video, 8))
    reference.generate(QUESTION, other, SamplingParams(max_new_tokens=4))
    after = reference.generate(QUESTION, encoded16, SamplingParams(max_new_tokens=10))
    fresh = ReferenceGenerator(reference.model, reference.tokenizer).generate(QUESTION, encoded16, SamplingParams(max_new_tokens=10))
    assert after.token_ids == fresh.token_ids  # no state carried over from the previous video
    again = reference.generate("Tell me a story about a cat.", None, SamplingParams(max_new_tokens=6))
    assert again.token_ids == first.token_ids


def test_sampling_is_seeded(reference, encoded16):
    params = dict(max_new_tokens=8, temperature=1.5, top_p=0.9, top_k=50, repetition_penalty=1.1)
    a = reference.generate(QUESTION, encoded16, SamplingParams(seed=1, **params))
    b = reference.generate(QUESTION, encoded16, SamplingParams(seed=1, **params))
    c = reference.generate(QUESTION, encoded16, SamplingParams(seed=2, **params))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_stop_strings_and_limits(reference, encoded16):
    full = reference.generate(QUESTION, encoded16, SamplingParams(max_new_tokens=12))
    assert full.finish_reason == "length" and len(full.token_ids) == 12
    piece = full.text[len(full.text) // 2 :][:2]
    stopped = reference.generate(QUESTION, encoded16, SamplingParams(max_new_tokens=12, stop_strings=(piece,)))
    assert stopped.finish_reason == "stop_string" and piece not in stopped.text
    assert full.text.startswith(stopped.text)
    with pytest.raises(ValueError, match="exceeds the model's 32768 positions"):
        reference.generate(QUESTION, encoded16, SamplingParams(max_new_tokens=40000))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
