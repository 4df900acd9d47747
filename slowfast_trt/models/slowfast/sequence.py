"""Which rows of a sequence cross-attend to the slow tokens, and how prompt ids and fast tokens
are merged. Shared by every backend so they all feed the decoder the same rows.

Upstream marks rows by token type (text 1/2, visual 3, padding 4) and, for
``text-only-vanilla``, lets every text row of a sample that contains video attend: system,
user, question and assistant header, before and after the video; ``masksystem`` drops the
text rows before the video; ``vanilla`` lets every row attend, visual rows included.
A prompt without video has no slow tokens and no row attends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slowfast_trt.models.slowfast.config import CrossAttnConfig
from slowfast_trt.prompt import PromptTokens

DECODE_MODES = ("upstream", "attend")


def check_decode_mode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise ValueError(f"unsupported decode mode {mode!r} (supported: {', '.join(DECODE_MODES)})")
    return mode


@dataclass(frozen=True)
class SequenceLayout:
    """Row layout of a prompt after merging: text before, ``num_fast`` visual rows, text after."""

    before: int
    num_fast: int
    after: int

    @property
    def length(self) -> int:
        return self.before + self.num_fast + self.after

    @classmethod
    def of(cls, prompt: PromptTokens, num_fast: int) -> "SequenceLayout":
        if prompt.video_index is None:
            return cls(len(prompt.ids), 0, 0)
        return cls(len(prompt.text_ids_before), num_fast, len(prompt.text_ids_after))


def prefill_attend_mask(layout: SequenceLayout, cross: CrossAttnConfig, has_video: bool) -> torch.Tensor:
    """(L,) bool: which rows of a prompt prefill cross-attend."""
    attend = torch.zeros(layout.length, dtype=torch.bool)
    if not has_video:
        return attend
    if not cross.text_rows_only:
        attend[:] = True
        return attend
    if not cross.mask_system:
        attend[: layout.before] = True
    attend[layout.before + layout.num_fast :] = True
    return attend


def continuation_attend_mask(length: int, has_video: bool, rows_attend: bool) -> torch.Tensor:
    """(L,) bool for rows appended after the video (follow-up text, or decode steps)."""
    return torch.full((length,), bool(has_video and rows_attend), dtype=torch.bool)


def decode_rows_attend(mode: str) -> bool:
    """``upstream``: generated tokens do not cross-attend (upstream's cached generation zeroes
    their term). ``attend``: they attend to the cached slow K/V, as response tokens did in training."""
    return check_decode_mode(mode) == "attend"


def attend_to_rows(attend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) bool -> (flat row indices int64, row offsets (B+1,) int32) for the decoder."""
    if attend.dim() == 1:
        attend = attend[None]
    rows = torch.nonzero(attend.reshape(-1), as_tuple=False).reshape(-1)
    counts = attend.sum(dim=1).to(torch.int32)
    offsets = torch.zeros(attend.shape[0] + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(counts, 0)
    return rows, offsets


def merge_embeddings(embed: torch.nn.Embedding, prompt: PromptTokens, fast: torch.Tensor | None) -> torch.Tensor:
    """Prompt ids with the placeholder replaced by the fast tokens -> (L, hidden)."""
    device = embed.weight.device
    before = embed(torch.tensor(prompt.text_ids_before, dtype=torch.long, device=device))
    if prompt.video_index is None:
        return before
    if fast is None:
        raise ValueError("prompt has a video placeholder but no video was encoded")
    after = embed(torch.tensor(prompt.text_ids_after, dtype=torch.long, device=device))
    return torch.cat((before, fast.to(before.dtype), after), dim=0)
