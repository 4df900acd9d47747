"""Parity with the upstream Slow-Fast Video MLLM code, through recorded golden outputs.

``tests/golden/upstream_tiny.json`` holds what upstream's own code (SHI-Labs/
Slow-Fast-Video-Multimodal-LLM, commit 69676a1; transformers 4.45.1, timm 0.9.11) produced on CPU
in float32 with one thread for tiny random checkpoints written by ``write_tiny_checkpoint`` (the
spec overrides of every case are in the file, with a fingerprint of the checkpoint). Only the
attention kernels were swapped for exact equivalents (flash-attn is CUDA-only); the file lists the
harness's patches. No upstream code runs here: these tests regenerate each checkpoint, run our
reference path and compare prompt ids, token counts, visual tokens, prefill logits, the greedy
tokens and the logits of every decode step.

Cases: 16 and 32 frames (adaptive temporal pooling), 32 frames on the avg_pool3d branch, a single
image, temporal sampling stride 2, and the ``vanilla``, ``masksystem`` and non-tanh gating variants.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slowfast_trt.fixtures.tiny_checkpoint import TinySpec, write_tiny_checkpoint
from slowfast_trt.prompt import Conversation, stop_token_ids
from slowfast_trt.models.slowfast.reference import EncodedVideo, ReferenceGenerator
from slowfast_trt.sampling import SamplingParams
from slowfast_trt.models.slowfast.sequence import (
    SequenceLayout,
    attend_to_rows,
    continuation_attend_mask,
    merge_embeddings,
    prefill_attend_mask,
)

torch.set_num_threads(1)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "upstream_tiny.json").read_text())
CASES = GOLDEN["cases"]
QUESTION = GOLDEN["inputs"]["question"]
REL_TOL = 1e-4  # relative to the largest magnitude of the compared upstream values
MAX_NEW_TOKENS = 12


def _fingerprint(ckpt: Path) -> str:
    """Same recipe as the golden file's ``inputs.fingerprint``."""
    h = hashlib.sha256()
    h.update(json.dumps(json.loads((ckpt / "config.json").read_text()), sort_keys=True).encode())
    tensors = load_file(str(ckpt / "model.safetensors"))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _close(ours, upstream, what: str) -> None:
    ours = torch.as_tensor(ours, dtype=torch.float64).reshape(-1)
    upstream = torch.as_tensor(upstream, dtype=torch.float64).reshape(-1)
    assert ours.shape == upstream.shape, f"{what}: shape {tuple(ours.shape)} vs upstream {tuple(upstream.shape)}"
    diff = (ours - upstream).abs().max().item()
    scale = upstream.abs().max().item()
    assert diff <= REL_TOL * scale, f"{what}: max |ours - upstream| = {diff:.3g} > {REL_TOL:g} * {scale:.3g}"


class Run:
    """Everything our reference path produces for one golden case (computed once per case)."""

    def __init__(self, directory: Path, golden: dict):
        self.fingerprint = _fingerprint(directory)
        g = ReferenceGenerator.load(directory)
        frames = golden["frames"]
        pixels = torch.randn(frames, 3, 576, 576, generator=torch.Generator().manual_seed(1234 + frames))
        conversation = Conversation(has_video=True)
        conversation.add_question(QUESTION)
        with torch.inference_mode():
            vis = g.model.encode_video(pixels)
            video = EncodedVideo(vis, g.model.compute_slow_kv(vis.slow), {})
            self.prompt = g.prompt_for(conversation)
            self.layout = SequenceLayout.of(self.prompt, int(vis.fast.shape[0]))
            last_logits, _ = g._prefill(self.prompt, self.layout, video)
            self.prefill_last = last_logits.float().reshape(-1)
            self.all_rows = self._all_row_logits(g, video)
            self.result = g.generate(QUESTION, video, SamplingParams(max_new_tokens=MAX_NEW_TOKENS))
            self.step_logits = self._teacher_forced_steps(g, video, golden["generated_ids"])
        self.visual = vis
        self.slow_tokens = video.slow_kv.num_tokens
        self.stop_ids = set(stop_token_ids(g.tokenizer))

    def _all_row_logits(self, g: ReferenceGenerator, video: EncodedVideo) -> torch.Tensor:
        """Prefill logits of every row (our reference prefill, with all_logits)."""
        model = g.model
        embeds = merge_embeddings(model.embed_tokens, self.prompt, video.visual.fast)[None]
        positions = torch.arange(self.layout.length)[None]
        rows, offsets = attend_to_rows(prefill_attend_mask(self.layout, model.config.cross_attn, True))
        keys, values = model.empty_cache()
        slow = video.slow_kv
        logits, _, _ = model.decoder(
            embeds, positions, keys, values,
            slow_keys=list(slow.keys), slow_values=list(slow.values), slow_lengths=slow.lengths,
            cross_rows=rows, cross_row_offsets=offsets, all_logits=True,
        )
        return logits[0].float()

    def _teacher_forced_steps(self, g: ReferenceGenerator, video: EncodedVideo, upstream_ids: list[int]):
        """Logits of each decode step when fed upstream's generated tokens (step 0 = prefill)."""
        logits, cache = g._prefill(self.prompt, self.layout, video)
        steps = [logits.float().reshape(-1)]
        length = self.layout.length
        for token in upstream_ids[:-1]:
            embeds = g.model.embed_tokens(torch.tensor([[token]]))
            attend = continuation_attend_mask(1, True, g.rows_attend_in_decode)
            logits, cache = g._step(embeds, torch.tensor([[length]]), cache, video, attend)
            steps.append(logits.float().reshape(-1))
            length += 1
        return steps


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    name = request.param
    golden = CASES[name]
    if "error" in golden:
        pytest.skip(f"upstream crashed on {name}: {golden['error']}")
    directory = write_tiny_checkpoint(tmp_path_factory.mktemp(name), TinySpec(overrides=golden["overrides"]))
    return name, golden, Run(directory, golden)


def test_golden_file_covers_the_planned_cases():
    assert len(CASES) == 8 and not any("error" in c for c in CASES.values())
    assert GOLDEN["upstream"]["commit"] == "69676a1"


def test_fixture_checkpoint_is_the_one_upstream_ran(case):
    name, golden, run = case
    assert run.fingerprint == golden["checkpoint_fingerprint"], (
        f"{name}: write_tiny_checkpoint no longer writes the checkpoint the goldens were recorded on; "
        "regenerate tests/golden/upstream_tiny.json with the upstream harness"
    )


def test_prompt_ids(case):
    name, golden, run = case
    assert list(run.prompt.ids) == golden["input_ids"]


def test_token_counts(case):
    name, golden, run = case
    assert run.slow_tokens == int(run.visual.slow.shape[0]) == golden["num_slow"]
    assert int(run.visual.fast.shape[0]) == golden["num_fast"]
    assert run.layout.length == golden["seq_len"]


def test_visual_tokens(case):
    name, golden, run = case
    for which, tokens in (("slow", run.visual.slow), ("fast", run.visual.fast)):
        stats = golden[f"{which}_stats"]
        t = tokens.double()
        assert abs(t.sum().item() - stats["sum"]) <= REL_TOL * stats["abs_sum"], f"{name}: {which} sum"
        _close(t.abs().sum().item(), stats["abs_sum"], f"{name}: {which} abs sum")
        _close(tokens[0, :8], stats["first_row"], f"{name}: first {which} token")
        _close(tokens[-1, :8], stats["last_row"], f"{name}: last {which} token")


def test_prefill_last_logits(case):
    name, golden, run = case
    _close(run.prefill_last, golden["prefill_last_logits"], f"{name}: prefill logits of the last position")


def test_prefill_text_row_logits(case):
    name, golden, run = case
    rows = golden["text_rows"]
    assert run.all_rows.shape == (golden["seq_len"], golden["vocab_rows"])
    _close(run.all_rows[rows][:, golden["probe_ids"]], golden["text_row_logits_probe"], f"{name}: text rows, probe ids")
    _close(torch.logsumexp(run.all_rows[rows], dim=-1), golden["text_row_logsumexp"], f"{name}: text rows, logsumexp")
    assert run.all_rows[rows].argmax(-1).tolist() == golden["text_row_argmax"]


def test_greedy_tokens(case):
    name, golden, run = case
    upstream = list(golden["generated_ids"])
    if upstream and upstream[-1] in run.stop_ids:  # upstream keeps the stop token, we do not
        upstream.pop()
    assert run.result.token_ids == upstream


def test_decode_step_logits(case):
    name, golden, run = case
    assert len(run.step_logits) == len(golden["decode_step_top5"])
    for step, (ours, top5) in enumerate(zip(run.step_logits, golden["decode_step_top5"])):
        _close(ours[top5["ids"]], top5["values"], f"{name}: decode step {step}, upstream top-5 logits")
        assert int(ours.argmax()) == top5["ids"][0], f"{name}: decode step {step} argmax"
