"""Shared pieces of the LongVU tests: the goldens, the tiny folders, tensor-summary checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

GOLDEN_PATH = Path(__file__).parent / "golden" / "longvu_tiny.json"
SLOW_CASES = ("long", "cap400")  # 96 and 440 frames: more than 20 s on two shared cores


def golden() -> dict:
    return json.loads(GOLDEN_PATH.read_text())


def case_names(include_slow: bool = True) -> list[str]:
    names = list(golden()["cases"])
    return names if include_slow else [n for n in names if n not in SLOW_CASES]


def case_frames(case: dict) -> np.ndarray:
    from slowfast_trt.fixtures.longvu_video import make_video

    v = case["video"]
    return make_video(v["h"], v["w"], v["runs"], v["seed"], v["block"], v["noise"])


def write_folders(root: Path, hub: bool = False) -> dict[str, Path]:
    """The tiny checkpoint in ``root/ckpt``, its towers as plain folders (and in a hub cache)."""
    from slowfast_trt.fixtures.tiny_longvu import write_tiny_longvu_checkpoint, write_tiny_vision_towers

    ckpt = write_tiny_longvu_checkpoint(root / "ckpt")
    towers = write_tiny_vision_towers(directory=root / "towers")
    if hub:
        write_tiny_vision_towers(hf_home=root / "hf_home")
    return {"checkpoint": ckpt, "siglip": towers["siglip"], "dino": towers["dino"], "hf_home": root / "hf_home"}


def check_stats(tensor: torch.Tensor, stats: dict, what: str, rel: float = 2e-5) -> None:
    """A tensor against a golden summary (shape, float64 sum/abs_sum, first/last row values).

    Sums are compared relative to ``abs_sum`` and row values relative to the tensor's RMS
    (the goldens hold 8 significant digits).
    """
    t = tensor.detach().to(torch.float64).cpu()
    assert list(t.shape) == list(stats["shape"]), f"{what}: shape {list(t.shape)} != {stats['shape']}"
    scale = float(stats["abs_sum"])
    assert abs(float(t.sum()) - stats["sum"]) <= rel * scale, f"{what}: sum {float(t.sum())} != {stats['sum']}"
    assert abs(float(t.abs().sum()) - scale) <= rel * scale, f"{what}: abs_sum {float(t.abs().sum())} != {scale}"
    rms = math.sqrt(float(stats["sq_sum"]) / t.numel()) if "sq_sum" in stats else 1.0
    rows = t.reshape(-1, t.shape[-1])
    for key, row in (("first_row", rows[0]), ("last_row", rows[-1])):
        if key in stats:
            want = torch.tensor(stats[key], dtype=torch.float64)
            got = row[: len(want)]
            assert torch.allclose(got, want, rtol=0, atol=rel * 5 * rms + 1e-6), f"{what}: {key} {got.tolist()} != {want.tolist()}"


def max_abs(a, b) -> float:
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def teacher_forced_logits(forward_rows, embed, embeds: torch.Tensor, ids: list[int]):
    """Prefill logits of every row, then the logits after each of ``ids`` but the last.

    ``forward_rows(embeds, start, cache, all_logits) -> (logits, cache)``; ``embed(ids) -> (n, H)``.
    """
    prefill, cache = forward_rows(embeds, 0, None, True)
    steps = [prefill[-1]]
    length = embeds.shape[0]
    for token in ids[:-1]:
        logits, cache = forward_rows(embed([token]), length, cache, False)
        steps.append(logits.reshape(-1))
        length += 1
    return prefill, steps


def check_logits(case: dict, prefill: torch.Tensor, steps: list[torch.Tensor], atol: float) -> float:
    """Prefill's last row (full), text rows' logsumexp and every decode step's top-5 -> max difference."""
    worst = max_abs(prefill[-1], case["prefill_last_logits"])
    rows = torch.as_tensor(case["text_rows"])
    lse = torch.logsumexp(prefill[rows].double(), dim=-1)
    worst = max(worst, max_abs(lse, case["text_row_logsumexp"]))
    assert prefill[rows].argmax(-1).tolist() == case["text_row_argmax"]
    for i, (got, want) in enumerate(zip(steps, case["decode_steps"])):
        values, ids = torch.topk(got.double(), 5)
        assert ids.tolist()[:1] == want["top5_ids"][:1], f"step {i}: top id {ids.tolist()} != {want['top5_ids']}"
        worst = max(worst, max_abs(got[want["top5_ids"]], want["top5_values"]))
        worst = max(worst, max_abs(torch.logsumexp(got.double(), 0), want["logsumexp"]))
    assert worst <= atol, f"logits differ by {worst} (> {atol})"
    return worst
