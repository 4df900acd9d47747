"""The PyTorch LongVU model against upstream's goldens (fp32, CPU): every recorded case.

Per case: prompt ids, both towers' pixels, DINOv2 features, the kept frames (DINO selection),
SigLIP features of the kept frames, the per-tower projections, the SVA output, the projector
calls, the resolution mode and its decisions (upgraded frames, drop chunk lengths), the final
input embeddings (row norms), the prefill and per-step logits, and the 12 greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

from longvu_helpers import (
    SLOW_CASES, case_frames, case_names, check_logits, check_stats, golden, teacher_forced_logits, write_folders,
)

GOLDEN = golden()
CASES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in case_names()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from slowfast_trt.fixtures.tiny_longvu import checkpoint_fingerprint
    from slowfast_trt.models.longvu.reference import LongVUReference

    folders = write_folders(tmp_path_factory.mktemp("longvu"))
    assert {k: checkpoint_fingerprint(folders[k]) for k in ("siglip", "dino")} == GOLDEN["inputs"]["tower_fingerprints"]
    return LongVUReference.load(folders["checkpoint"], siglip=folders["siglip"], dino=folders["dino"]), folders


def _check_pixels(ref, frames, case):
    from slowfast_trt.models.longvu.pixels import tower_pixels

    pix = case["pixels"]
    for name, tower in (("siglip", ref.model.siglip), ("dino", ref.model.dino)):
        pixels = tower_pixels(frames, name)
        normed = tower.normalize(torch.from_numpy(pixels), torch.float32).double()
        assert list(normed.shape) == pix[name]["shape"]
        sums = normed.sum(dim=(1, 2, 3))
        assert torch.allclose(sums, torch.tensor(pix[name]["per_frame_sum"], dtype=torch.float64), rtol=1e-6, atol=0.05)


def _check_connector(ref, video, rows, case):
    model, kept = ref.model, rows.kept
    siglip = model.siglip_features(torch.from_numpy(video.siglip_pixels[kept]))
    check_stats(siglip, case["siglip_features"], "siglip_features")
    dino = video.dino[kept]
    check_stats(model.connector.aux_0(siglip), case["aux_projected"]["siglip"], "aux_projected.siglip")
    check_stats(model.connector.aux_1(dino), case["aux_projected"]["dino"], "aux_projected.dino")
    from slowfast_trt.models.longvu.connector import cell_bias

    sampled = model.connector.sample(siglip, dino, cell_bias(video.mask))
    check_stats(sampled, case["sva_output"], "sva_output")
    high, low = model.connect(siglip, dino, video.mask)
    check_stats(high, case["mm_projector_calls"][0], "mm_projector high")
    if len(case["mm_projector_calls"]) > 1:
        check_stats(low, case["mm_projector_calls"][1], "mm_projector low")


def _check_decisions(rows, case):
    mode = case["mode"]
    expected = "mix" if mode["input_mix_res"] else ("high" if mode["input_high_res"] else "too_many")
    assert rows.mode == expected
    assert rows.budget.b == mode["max_visual_len"]
    assert rows.visual.upgraded == (mode["top_indices"] or [])
    assert rows.visual.chunk_lengths == case["drop_chunk_lengths_before_force_remove"]
    assert rows.visual.force_remove == mode["force_remove"]
    if case["mix_sim_frame"] is not None:
        assert torch.allclose(rows.visual.frame_sim.double(), torch.tensor(case["mix_sim_frame"], dtype=torch.float64),
                              atol=1e-5)
    assert rows.visual_tokens == case["visual_tokens"]
    assert rows.length == case["seq_len"]


@pytest.mark.parametrize("name", CASES)
def test_case_matches_upstream(reference, name):
    ref, _ = reference
    case = GOLDEN["cases"][name]
    prompt = ref.prompt_ids(case["question"])
    assert list(prompt.ids) == case["input_ids"] and prompt.video_index == case["placeholder_index"]
    frames = case_frames(case)
    _check_pixels(ref, frames, case)
    video = ref.encode_video(frames)
    check_stats(video.dino, case["dino_features"], "dino_features")
    rows = ref.prepare(video, case["question"])
    assert rows.kept == case["kept_frame_indices"]
    _check_decisions(rows, case)
    _check_connector(ref, video, rows, case)
    embeds = case["inputs_embeds"]
    check_stats(rows.embeds[None], embeds, "inputs_embeds")
    norms = rows.embeds.double().norm(dim=-1)
    assert torch.allclose(norms, torch.tensor(embeds["row_norms"], dtype=torch.float64), rtol=2e-5, atol=1e-5)
    prefill, steps = teacher_forced_logits(ref.forward_rows, ref.model.embed, rows.embeds, case["generated_ids"])
    assert prefill.shape[-1] == case["vocab_rows"]
    check_logits(case, prefill, steps, atol=1e-3)
    from slowfast_trt.sampling import SamplingParams

    result = ref.generate(video, case["question"], SamplingParams(max_new_tokens=len(case["generated_ids"])))
    assert result.token_ids == case["generated_ids"]
    assert result.kept_frames == case["kept_frame_indices"] and result.fast_tokens == case["visual_tokens"]
