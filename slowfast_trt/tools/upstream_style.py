"""An eager pipeline in the upstream style, built from this package's modules: a shippable baseline.

What it does the way upstream's code does (``LlavaQwenSlowFastForCausalLM.generate`` with
transformers 4.45), unlike the runtime:

* the vision tower runs on all frames in one batch;
* prefill computes the LM head over every row (transformers 4.45 returns all logits), not
  only the last;
* every decode step projects the slow tokens to K/V again (layer norm + ``kv_proj`` of every
  slow token in every hybrid layer) before the step, as upstream's hybrid layers do;
* the KV cache grows by concatenation (``DynamicCache``).

Attention, the ConvNeXt blocks and the tokens are ours (the same greedy tokens as the
reference), so this measures the pipeline's structure, not upstream's kernels: the real
upstream code is measured by ``bench_upstream --upstream-cmd``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from slowfast_trt.models.slowfast.reference import EncodedVideo, ReferenceGenerator
from slowfast_trt.models.slowfast.sequence import attend_to_rows
from slowfast_trt.preprocess import normalize


class UpstreamStyleGenerator(ReferenceGenerator):
    """:class:`ReferenceGenerator` with upstream's pipeline structure (see the module docstring)."""

    @torch.inference_mode()
    def encode_crops(self, crops: np.ndarray) -> EncodedVideo:
        """uint8 (T, S, S, 3) crops -> encoded video; normalisation (upstream's image processor,
        pixel preprocessing) is done first and not timed, as on upstream's side."""
        pixels = torch.from_numpy(normalize(crops)).to(self.model.device)
        start = time.perf_counter()
        visual = self.model.encode_video(pixels)
        slow_kv = self.model.compute_slow_kv(visual.slow)
        return EncodedVideo(visual, slow_kv, {"vision_ms": (time.perf_counter() - start) * 1e3})

    def _step(self, embeds, positions, cache, video: EncodedVideo | None, attend: torch.Tensor):
        rows, offsets = attend_to_rows(attend)
        slow = video.slow_kv if video is not None else None
        if slow is not None and embeds.shape[1] == 1:
            slow = self.model.compute_slow_kv(video.visual.slow)  # upstream: per step, every hybrid layer
        logits, new_k, new_v = self.model.decoder(
            embeds, positions, cache[0], cache[1],
            slow_keys=list(slow.keys) if slow else None,
            slow_values=list(slow.values) if slow else None,
            slow_lengths=slow.lengths if slow else None,
            cross_rows=rows.to(embeds.device),
            cross_row_offsets=offsets.to(embeds.device),
            all_logits=True,  # transformers 4.45: the LM head over every row
        )
        keys = [torch.cat((old, new), dim=1) for old, new in zip(cache[0], new_k)]
        values = [torch.cat((old, new), dim=1) for old, new in zip(cache[1], new_v)]
        return logits[0, -1], (keys, values)
