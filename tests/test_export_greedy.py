"""The ONNX subgraphs chained in a minimal loop generate the reference generator's tokens.

vision (uint8 crops) -> projector -> fast_pool, slow_kv -> prefill (decoder.onnx) -> greedy decode with the
KV cache concatenated by hand: ``decoder_nocross.onnx`` in ``upstream`` mode, ``decoder.onnx``
with one attending row in ``attend`` mode. float32: identical token ids, and the logits of every
step match the reference's (the tiny random model soon repeats one token, so ids alone would
say little about the later steps).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.export.subgraphs import export_all
from slowfast_trt.preprocess import resize_and_center_crop
from slowfast_trt.prompt import Conversation
from slowfast_trt.models.slowfast.reference import ReferenceGenerator
from slowfast_trt.generation import DecodeOutcome, decode_loop
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.models.slowfast.sequence import (
    SequenceLayout,
    attend_to_rows,
    continuation_attend_mask,
    prefill_attend_mask,
)
from slowfast_trt.models.slowfast.visual_tokens import pooling_matrices
from slowfast_trt.video import load_video

QUESTION = "What is happening in this video?"
MAX_NEW_TOKENS = 12


class OnnxPipeline:
    """Just enough runtime to generate greedily from an export folder with ONNX Runtime."""

    def __init__(self, out_dir, specs):
        self.specs = specs
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sessions = {
            name: ort.InferenceSession(str(out_dir / spec.file), options, providers=["CPUExecutionProvider"])
            for name, spec in specs.items()
            if spec.is_onnx
        }
        self.embed = np.load(out_dir / S.EMBED_FILE)

    def run(self, name, **feeds):
        spec = self.specs[name]
        return dict(zip(spec.output_names, self.sessions[name].run(list(spec.output_names), feeds)))

    def encode(self, crops: np.ndarray, visual):
        features = self.run(S.VISION, frames=crops)["features"]
        pooling = pooling_matrices(len(crops), visual, features.shape[1])
        tokens = self.run(S.PROJECTOR, features=features, grid_pool=pooling.grid_pool.numpy())["frame_tokens"]
        fast = self.run(S.FAST_POOL, frame_tokens=tokens, temporal_pool=pooling.temporal_pool.numpy(),
                        spatial_pool=pooling.spatial_pool.numpy())["fast_tokens"]
        slow = tokens.reshape(1, -1, tokens.shape[-1])
        slow_kv = self.run(S.SLOW_KV, slow_tokens=slow)
        return fast.reshape(-1, fast.shape[-1]), slow_kv, slow.shape[1]

    def _step(self, embeds, start, cache, slow=None, attend=None):
        past_keys, past_values = cache
        feeds = {"inputs_embeds": embeds[None], "position_ids": np.arange(start, start + len(embeds))[None],
                 "past_length": np.array([past_keys[0].shape[1]])}
        for i, (k, v) in enumerate(zip(past_keys, past_values)):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = k, v
        name = S.DECODER_NOCROSS
        if attend is not None:
            slow_kv, num_slow = slow
            rows, offsets = attend_to_rows(attend)
            feeds.update(
                slow_kv,
                slow_lengths=np.array([num_slow], np.int32),
                cross_rows=rows.numpy(),
                cross_row_offsets=offsets.numpy(),
            )
            name = S.DECODER
        out = self.run(name, **feeds)
        layers = range(len(past_keys))
        keys = [np.concatenate((past_keys[i], out[f"new_key_{i}"]), axis=1) for i in layers]
        values = [np.concatenate((past_values[i], out[f"new_value_{i}"]), axis=1) for i in layers]
        return out["logits"][0], (keys, values)

    def generate(self, reference: ReferenceGenerator, crops: np.ndarray, max_new_tokens: int):
        """Greedy ids and the logits of every step (prefill first)."""
        config = reference.model.config
        fast, slow_kv, num_slow = self.encode(crops, config.visual)
        conversation = Conversation(has_video=True)
        conversation.add_question(QUESTION)
        prompt = reference.prompt_for(conversation)
        layout = SequenceLayout.of(prompt, fast.shape[0])
        embeds = np.concatenate(
            [self.embed[list(prompt.text_ids_before)], fast, self.embed[list(prompt.text_ids_after)]]
        )
        text = config.text
        empty = np.zeros((1, 0, text.num_kv_heads, text.head_dim), np.float32)
        cache = ([empty] * text.num_layers, [empty] * text.num_layers)
        attend = prefill_attend_mask(layout, config.cross_attn, has_video=True)
        logits, cache = self._step(embeds, 0, cache, (slow_kv, num_slow), attend)
        state = {"cache": cache, "length": layout.length, "logits": logits}
        steps = [logits]

        def step(token: int) -> torch.Tensor:
            step_attend = torch.ones(1, dtype=torch.bool) if reference.rows_attend_in_decode else None
            state["logits"], state["cache"] = self._step(self.embed[[token]], state["length"], state["cache"],
                                                         (slow_kv, num_slow), step_attend)
            steps.append(state["logits"])
            state["length"] += 1
            return torch.from_numpy(state["logits"])

        outcome = DecodeOutcome()
        params = SamplingParams(max_new_tokens=max_new_tokens)
        for _ in decode_loop(torch.from_numpy(logits), step, params, set(reference.stop_ids), reference.tokenizer, {},
                             outcome):
            pass
        return outcome.ids, steps


def reference_step_logits(reference: ReferenceGenerator, encoded, ids: list[int]) -> list[torch.Tensor]:
    """The reference's logits of the prefill and of each step feeding ``ids`` (teacher forcing)."""
    conversation = Conversation(has_video=True)
    conversation.add_question(QUESTION)
    prompt = reference.prompt_for(conversation)
    layout = SequenceLayout.of(prompt, int(encoded.visual.fast.shape[0]))
    with torch.inference_mode():
        logits, cache = reference._prefill(prompt, layout, encoded)
        steps = [logits]
        for n, token in enumerate(ids[:-1]):
            embeds = reference.model.embed_tokens(torch.tensor([[token]]))
            attend = continuation_attend_mask(1, True, reference.rows_attend_in_decode)
            logits, cache = reference._step(embeds, torch.tensor([[layout.length + n]]), cache, encoded, attend)
            steps.append(logits)
    return steps


_CASES: dict = {}


def _case(ckpt, frames, sample_video, tmp_path_factory):
    """Per (checkpoint, frames): the reference model, its encoded video, the uint8 crops and
    the ONNX pipeline exported from the same model (shared by both decode modes)."""
    key = (str(ckpt), frames)
    if key not in _CASES:
        reference = ReferenceGenerator.load(ckpt)
        video = load_video(sample_video, frames)
        out_dir = tmp_path_factory.mktemp(f"greedy_{frames}")
        pipeline = OnnxPipeline(out_dir, export_all(reference.model, out_dir, "float32", frames, 1024))
        _CASES[key] = (reference, reference.encode_video(video), resize_and_center_crop(video.frames), pipeline)
    return _CASES[key]


@pytest.mark.parametrize(
    "ckpt_fixture, frames, mode",
    [
        ("tiny_ckpt", 16, "upstream"),
        ("tiny_ckpt", 32, "upstream"),
        ("tiny_ckpt", 32, "attend"),
        ("tiny_ckpt_pool3d", 32, "upstream"),
        ("tiny_ckpt_pool3d", 32, "attend"),
    ],
)
def test_onnx_greedy_matches_reference(request, tmp_path_factory, sample_video, ckpt_fixture, frames, mode):
    base, encoded, crops, pipeline = _case(
        request.getfixturevalue(ckpt_fixture), frames, sample_video, tmp_path_factory
    )
    reference = ReferenceGenerator(base.model, base.tokenizer, decode_mode=mode)
    want = reference.generate(QUESTION, encoded, SamplingParams(max_new_tokens=MAX_NEW_TOKENS))
    got, logits = pipeline.generate(reference, crops, MAX_NEW_TOKENS)
    assert got == want.token_ids
    assert len(got) >= 3  # a real comparison, not an immediate stop
    expected = reference_step_logits(reference, encoded, got)
    assert len(logits) == len(expected)
    for step, (g, w) in enumerate(zip(logits, expected)):
        torch.testing.assert_close(
            torch.from_numpy(g), w, rtol=1e-4, atol=1e-4 * float(w.abs().max()), msg=f"step {step}"
        )
