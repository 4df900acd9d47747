"""Static-shape decode steps (the form a CUDA graph replays), checked on CPU.

The decoder's ``past_length`` input lets it read the whole preallocated cache with the rows
not yet written masked; that must equal reading the valid prefix, in PyTorch and in the
exported graphs under ONNX Runtime, and a runtime running every decode step that way must
generate the reference's tokens. The capture itself needs CUDA (tests/test_decode_graph_gpu.py).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager, one_sequence_masked
from slowfast_trt.runtime.decode_graph import StaticDecodeStep, StaticStepCache, resolve_decode_steps
from slowfast_trt.runtime.engine import Engine, EngineError, TensorInfo
from slowfast_trt.runtime.kv_cache import KVCache, KVCacheSpec
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
from slowfast_trt.models.slowfast.sequence import attend_to_rows
from test_runtime_ort import MAX_SEQ_LEN, clips, exports, references  # noqa: F401 (fixtures)
from test_runtime_torch import TURNS, check_conversation

POISON = 1e4  # finite: masked rows get probability exactly 0, and 0 x finite = 0


def _decoder_case(model, seq: int, past: int, full: int, gen: torch.Generator):
    text = model.config.text
    kv = (text.num_kv_heads, text.head_dim)
    layers, hybrid = text.num_layers, len(model.decoder.hybrid_layer_ids)
    cache_k = [torch.full((1, full, *kv), POISON) for _ in range(layers)]
    cache_v = [torch.full((1, full, *kv), -POISON) for _ in range(layers)]
    for k, v in zip(cache_k, cache_v):
        k[:, :past] = torch.randn(1, past, *kv, generator=gen)
        v[:, :past] = torch.randn(1, past, *kv, generator=gen)
    attend = torch.zeros(seq, dtype=torch.bool)
    attend[-1] = True
    rows, offsets = attend_to_rows(attend)
    slow = dict(
        slow_keys=[torch.randn(1, kv[0], 6, kv[1], generator=gen) for _ in range(hybrid)],
        slow_values=[torch.randn(1, kv[0], 6, kv[1], generator=gen) for _ in range(hybrid)],
        slow_lengths=torch.tensor([5], dtype=torch.int32),
        cross_rows=rows,
        cross_row_offsets=offsets,
    )
    embeds = torch.randn(1, seq, text.hidden_size, generator=gen)
    return embeds, torch.arange(past, past + seq)[None], cache_k, cache_v, slow


@pytest.mark.parametrize("seq,past", [(1, 7), (1, 0), (3, 11), (1, 39)])
def test_whole_cache_with_past_length_equals_the_valid_prefix(reference, seq, past):
    model, full = reference.model, 40
    embeds, positions, cache_k, cache_v, slow = _decoder_case(model, seq, past, full, torch.Generator().manual_seed(past))
    with torch.no_grad():
        prefix = model.decoder(embeds, positions, [k[:, :past] for k in cache_k], [v[:, :past] for v in cache_v], **slow)
        whole = model.decoder(embeds, positions, cache_k, cache_v, past_length=torch.tensor([past]), **slow)
        implied = model.decoder(embeds, positions, [k[:, :past] for k in cache_k], [v[:, :past] for v in cache_v],
                                past_length=torch.tensor([past]), **slow)
    torch.testing.assert_close(whole[0], prefix[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(whole[1] + whole[2], prefix[1] + prefix[2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(implied[0], prefix[0], rtol=0, atol=0)  # past_length = P masks nothing
    # The poisoned rows are really read unless masked: without past_length the answer changes.
    with torch.no_grad():
        unmasked = model.decoder(embeds, positions, cache_k, cache_v, **slow)
    assert not torch.allclose(unmasked[0], prefix[0], atol=1e-3)


@pytest.mark.parametrize("name", [S.DECODER, S.DECODER_NOCROSS])
def test_exported_decoders_accept_the_whole_cache(exports, name):  # noqa: F811
    folder = exports("tiny_ckpt", 16)
    session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    layers = sum(1 for n in inputs if n.startswith("past_key_"))
    kv_heads, head_dim = inputs["past_key_0"].shape[2:]
    rng = np.random.default_rng(3)
    past, full = 25, MAX_SEQ_LEN
    hidden = inputs["inputs_embeds"].shape[2]
    base = {"inputs_embeds": rng.standard_normal((1, 1, hidden), np.float32), "position_ids": np.array([[past]])}
    if name == S.DECODER:
        hybrid = sum(1 for n in inputs if n.startswith("slow_key_"))
        for j in range(hybrid):
            for kind in ("key", "value"):
                base[f"slow_{kind}_{j}"] = rng.standard_normal((1, kv_heads, 9, head_dim), np.float32)
        base.update(slow_lengths=np.array([7], np.int32), cross_rows=np.array([0]), cross_row_offsets=np.array([0, 1], np.int32))
    prefix, whole = dict(base, past_length=np.array([past])), dict(base, past_length=np.array([past]))
    for i in range(layers):
        for kind, poison in (("key", POISON), ("value", -POISON)):
            cache = np.full((1, full, kv_heads, head_dim), poison, np.float32)
            cache[:, :past] = rng.standard_normal((1, past, kv_heads, head_dim), np.float32)
            prefix[f"past_{kind}_{i}"], whole[f"past_{kind}_{i}"] = cache[:, :past], cache
    names = [o.name for o in session.get_outputs()]
    want, got = session.run(names, prefix), session.run(names, whole)
    for n, a, b in zip(names, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=n)


@pytest.mark.parametrize("ckpt,frames", [("tiny_ckpt", 16), ("tiny_ckpt_pool3d", 32)])
def test_static_decode_steps_generate_the_reference_tokens(ckpt, frames, exports, references, clips):  # noqa: F811
    rt = SlowFastRuntime.load(exports(ckpt, frames), threads=1, decode_steps="static")
    reference = references(ckpt)
    assert rt.info()["decode_steps"] == "static"
    pasts = []
    for name in ("decoder", "decoder_nocross"):
        engine = rt._model.engines[name]
        original = engine.run

        def spy(feeds, outputs=None, _run=original):
            pasts.append((feeds["inputs_embeds"].shape[1], feeds["past_key_0"].shape[1]))
            return _run(feeds, outputs)

        engine.run = spy
    encoded = reference.encode_video(clips[frames])
    video = rt.encode_video(clips[frames])
    for mode in ("upstream", "attend"):
        check_conversation(rt, reference, encoded, video, mode)
    steps = [past for rows, past in pasts if rows == 1]
    assert steps and all(past == MAX_SEQ_LEN for past in steps)  # every decode step read the whole cache
    # One binding per engine (nocross for upstream, decoder for attend) and sampling program
    # (greedy turns, the seeded top-k turn: the device sampler is part of the step).
    assert len(rt._runner._static) == 4
    upstream_steps = [step for step in rt._runner._static._steps.values() if step.video is None]
    assert len(upstream_steps) == 2 and all("slow_key_0" not in step.feeds for step in upstream_steps)  # nocross
    rt.generate(clips[frames][::-1].copy(), "What is happening in this video?", max_new_tokens=3)
    assert len(rt._runner._static) == 4  # another video, upstream mode: the nocross step is reused
    text = rt.generate(None, "Tell me a story about a cat.", max_new_tokens=6)
    from slowfast_trt.sampling import SamplingParams

    assert text.token_ids == reference.generate("Tell me a story about a cat.", None, SamplingParams(max_new_tokens=6)).token_ids


def test_static_steps_leave_the_same_kv_cache_as_dynamic_ones(exports, clips):  # noqa: F811
    """Tokens of a tiny random model barely depend on the cache; its contents must match."""
    folder = exports("tiny_ckpt", 16)
    caches = {}
    for mode in ("dynamic", "static"):
        rt = SlowFastRuntime.load(folder, threads=1, decode_steps=mode)
        with rt.open_video(clips[16], decode_mode="attend") as session:
            session.ask("What is happening in this video?", max_new_tokens=8)
            kv = session._kv
            caches[mode] = [t[:, : kv.length].clone() for t in kv.keys + kv.values]
    assert caches["static"][0].shape[1] > 8
    for got, want in zip(caches["static"], caches["dynamic"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_static_decode_steps_on_the_torch_backend(tiny_ckpt, reference, clips):  # noqa: F811
    rt = SlowFastRuntime.load(tiny_ckpt, backend="torch", max_seq_len=MAX_SEQ_LEN, decode_steps="static")
    encoded = reference.encode_video(clips[16])
    for mode in ("upstream", "attend"):
        check_conversation(rt, reference, encoded, clips[16], mode)
    assert len(rt._runner._static) == 0  # the sessions owned their videos: steps bound to them were dropped


def test_decode_step_modes():
    class Decoder:
        input_names = ("inputs_embeds", "past_length")

    class OldDecoder:
        input_names = ("inputs_embeds",)

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_decode_steps("auto", "onnxruntime", cpu, Decoder()) == "dynamic"
    assert resolve_decode_steps("auto", "torch", cpu, Decoder()) == "dynamic"
    assert resolve_decode_steps("auto", "tensorrt", cuda, Decoder()) == "cuda-graph"
    assert resolve_decode_steps("auto", "torch", cuda, Decoder()) == "cuda-graph"
    assert resolve_decode_steps("auto", "onnxruntime", cuda, Decoder()) == "dynamic"  # ORT cannot be captured
    assert resolve_decode_steps("auto", "tensorrt", cuda, OldDecoder()) == "dynamic"
    assert resolve_decode_steps("static", "onnxruntime", cpu, Decoder()) == "static"
    with pytest.raises(ValueError, match="decode_steps must be one of auto, dynamic, static, cuda-graph, got 'graph'"):
        resolve_decode_steps("graph", "torch", cpu, Decoder())
    with pytest.raises(ValueError, match="needs a CUDA device, the runtime is on cpu"):
        resolve_decode_steps("cuda-graph", "torch", cpu, Decoder())
    with pytest.raises(ValueError, match="needs the tensorrt or torch backend, not 'onnxruntime'"):
        resolve_decode_steps("cuda-graph", "onnxruntime", cuda, Decoder())
    with pytest.raises(ValueError, match="no past_length input"):
        resolve_decode_steps("static", "onnxruntime", cpu, OldDecoder())


def test_bad_decode_steps_is_one_line_from_load(tiny_ckpt):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        SlowFastRuntime.load(tiny_ckpt, backend="torch", device="cpu", max_seq_len=64, decode_steps="cuda-graph")


def test_static_steps_are_kept_per_binding_and_dropped_with_their_video(tiny_ckpt, clips):  # noqa: F811
    rt = SlowFastRuntime.load(tiny_ckpt, backend="torch", max_seq_len=MAX_SEQ_LEN, decode_steps="static")
    steps = rt._runner._static
    shared = rt.encode_video(clips[16])
    first = rt.open_video(shared, decode_mode="attend")
    first.ask("What is happening in this video?", max_new_tokens=3)
    second = rt.open_video(shared, decode_mode="attend")  # another cache: another binding
    second.ask("What is happening in this video?", max_new_tokens=3)
    assert len(steps) == 2
    first.ask("And then?", max_new_tokens=3)  # the same binding again: no new step
    assert len(steps) == 2
    first.close()
    second.close()  # caches kept or released, the video is shared (not released): steps stay valid
    shared.release()
    rt._runner.forget_released()
    assert len(steps) == 0


@pytest.mark.parametrize("n,offsets", [(9, (0, 3)), (4, (0, 3)), (0, (0, 3)), (6, (1, 2))])
def test_masked_one_sequence_cross_attention_equals_the_sliced_one(n, offsets):
    """The capture-safe path (used on CUDA for batch 1) against the general one, in float64."""
    gen = torch.Generator().manual_seed(n)
    query = torch.randn(3, 4, 8, generator=gen, dtype=torch.float64)
    key = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64)
    value = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64)
    key[:, :, n:] = value[:, :, n:] = POISON
    lengths, row_offsets = torch.tensor([n], dtype=torch.int32), torch.tensor(offsets, dtype=torch.int32)
    want = cross_attention_eager(query, key, value, lengths, row_offsets)
    got = one_sequence_masked(query, key, value, lengths, row_offsets, 8**-0.5, torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


class ToyDecoder(Engine):
    """Our engine interface with the decoder's step inputs and no model behind it: it writes
    a recognisable new K/V row, so the step's copy into the cache can be checked."""

    def __init__(self):
        self.name, self.device, self.closed, self.fork = "decoder", torch.device("cpu"), False, None
        self._inputs = tuple(TensorInfo(n, "float32", s) for n, s in (
            ("inputs_embeds", (1, "seq", 8)), ("position_ids", (1, "seq")), ("past_length", (1,)),
            ("past_key_0", (1, "past", 2, 4)), ("past_value_0", (1, "past", 2, 4)), ("slow_key_0", (1, 2, "n", 4))))
        self._outputs = (TensorInfo("logits", "float32", (1, 16)),)

    def run(self, feeds, outputs=None):
        outputs["new_key_0"].fill_(float(feeds["position_ids"][0, 0]) + 100)
        outputs["new_value_0"].fill_(-1)
        return outputs

    def for_capture(self):
        self.fork = ToyDecoder()
        return self.fork

    def close(self):
        self.closed = True


def _toy_cache():
    return KVCache(KVCacheSpec(num_layers=1, kv_heads=2, head_dim=4, max_len=8))


EMBEDS = torch.zeros(1, 1, 8)  # the runner's embedding buffer, bound like the slow K/V


def test_a_step_writes_its_row_at_past_length():
    kv = _toy_cache()
    fixed = {"inputs_embeds": EMBEDS, "slow_key_0": torch.zeros(1, 2, 3, 4)}
    step = StaticDecodeStep(ToyDecoder(), kv, fixed, torch.zeros(1, 16), capture=False)
    for position in (0, 1, 2, 5):
        step.run(position)
    assert kv.keys[0][0, :, 0, 0].tolist() == [100, 101, 102, 0, 0, 105, 0, 0]
    with pytest.raises(EngineError, match="decoder: a static decode step has no tensor for slow_key_0"):
        StaticDecodeStep(ToyDecoder(), kv, {"inputs_embeds": EMBEDS}, torch.zeros(1, 16), capture=False)


def test_a_captured_step_owns_its_engine_state_and_closes_it():
    shared, kv, slow = ToyDecoder(), _toy_cache(), {"inputs_embeds": EMBEDS, "slow_key_0": torch.zeros(1, 2, 3, 4)}
    step = StaticDecodeStep(shared, kv, slow, torch.zeros(1, 16), capture=True)
    assert step.engine is shared.fork and step.feeds["past_key_0"] is kv.keys[0]  # the whole cache, bound once
    step.release()
    assert shared.fork.closed and not shared.closed
    eager = StaticDecodeStep(shared, kv, slow, torch.zeros(1, 16), capture=False)
    assert eager.engine is shared
    eager.release()
    assert not shared.closed


def test_step_cache_keeps_the_most_recent_bindings():
    engine, logits = ToyDecoder(), torch.zeros(1, 16)
    steps = StaticStepCache(capture=True, size=2)  # captured steps own a forked engine each
    caches = [_toy_cache() for _ in range(3)]
    slow = {"inputs_embeds": EMBEDS, "slow_key_0": torch.zeros(1, 2, 3, 4)}
    first = steps.get(engine, caches[0], slow, logits)
    assert steps.get(engine, caches[0], slow, logits) is first  # same binding: the same step
    second = steps.get(engine, caches[1], slow, logits)
    steps.get(engine, caches[0], slow, logits)  # first is now the most recent
    steps.get(engine, caches[2], slow, logits)  # evicts the least recent: second
    assert len(steps) == 2 and second.engine.closed and not first.engine.closed
    other_slow = {"inputs_embeds": EMBEDS, "slow_key_0": torch.zeros(1, 2, 5, 4)}  # another video's slow K/V: another binding
    assert steps.get(engine, caches[0], other_slow, logits) is not first
    caches[0].release()
    steps.drop_released()
    assert all(step.kv is caches[2] for step in steps._steps.values())

    class Video:  # a session.VideoState as far as the cache looks at it
        released = False

    old_video, new_video = Video(), Video()
    before = steps.get(engine, caches[2], slow, logits, old_video)
    # The same addresses now hold another video's tensors: a new step, the old one released.
    after = steps.get(engine, caches[2], slow, logits, new_video)
    assert after is not before and before.engine.closed and after.video is new_video
    new_video.released = True
    steps.drop_released()
    assert after.engine.closed and all(step.video is not new_video for step in steps._steps.values())
    kept = [steps.get(engine, caches[2], slow, logits), steps.get(engine, caches[1], slow, logits)]
    steps.release_all()
    assert len(steps) == 0 and kept and all(step.engine.closed for step in kept)
