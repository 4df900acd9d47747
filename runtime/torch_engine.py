"""PyTorch engines: the model's own modules run eagerly behind the :class:`Engine` interface.

This is the reference backend (``SlowFastRuntime.load(ckpt, backend="torch")``): the same
``SlowFastModel`` the reference generator runs, cut into the stages the exporter writes,
with the same input and output names, so the runtime drives every backend identically.

| engine   | inputs                                              | outputs                          |
|----------|-----------------------------------------------------|----------------------------------|
| vision   | frames (T, S, S, 3) uint8, resized and cropped      | features (T, n, C_vis)           |
| projector| features (N, n, C_vis), grid_pool (n', n)          | frame_tokens (N, n', hid)        |
| fast_pool| frame_tokens (T, n', hid), temporal_pool, spatial_pool | fast_tokens (F, n'', hid)     |
| slow_kv  | slow_tokens (1, Ns, hidden)                         | slow_key_j, slow_value_j (1, Hkv, Ns, D) |
| decoder  | see ``slowfast_trt.export.specs`` and ``.qwen2``     | logits (1, vocab), new_key_i, new_value_i |

Names are those of :mod:`slowfast_trt.export.specs`. Like the exported graphs these engines
take any frame count, and one ``decoder`` serves prefill and every decode step (with no
attending row it is bit-exact to the exported ``decoder_nocross``). ``projector`` and
``fast_pool`` run the model's own pooling (``avg_pool2d``, ``avg_pool3d``, adaptive pooling:
the reference's numbers, bit for bit); the pooling matrices the graphs take as data only say
which branch (image or video) and the output shape here.
The vision engine feeds the uint8 frames to the tower with the pixel normalisation folded into
the stem convolution (``ConvNeXtTower`` with ``normalise``, as the exported vision graph): no pass over
the frames normalises them; features match the reference's normalise-then-convolve to ~1e-6.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.models.slowfast.visual_tokens import pool_grid, split_slow_fast
from slowfast_trt.models.slowfast.model import SlowFastModel
from slowfast_trt.preprocess import CLIP_MEAN, CLIP_STD
from slowfast_trt.runtime.engine import Engine, TensorInfo, check_feeds, check_output_buffer, dtype_name

__all__ = ["TorchEngine", "torch_engines"]


class TorchEngine(Engine):
    """A Python function over named tensors, run under ``torch.no_grad`` on the model's device."""

    def __init__(
        self,
        name: str,
        fn: Callable[..., dict[str, torch.Tensor]],
        inputs: tuple[TensorInfo, ...],
        outputs: tuple[TensorInfo, ...],
        device: torch.device,
        validate: bool = True,
    ):
        self.name = name
        self.device = torch.device(device)
        self._fn = fn
        self._inputs = inputs
        self._outputs = outputs
        self.validate = validate

    def run(self, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None):
        if self.validate:
            check_feeds(self.name, self._inputs, feeds)
        with torch.no_grad():
            result = self._fn(**feeds)
            for name, buffer in (outputs or {}).items():
                value = result[name]
                check_output_buffer(self.name, name, buffer, value.shape, value.dtype)
                buffer.copy_(value)
                result[name] = buffer
        return result


def _infos(tensors) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in tensors)


def _stage_functions(model: SlowFastModel) -> dict:
    """name -> function of named tensors returning named tensors, for every stage."""
    cfg, dev, layers = model.config, model.device, model.config.text.num_layers
    hybrid = len(model.decoder.hybrid_layer_ids)

    def vision(frames):
        return {"features": model.vision(frames.to(dev), normalise=(CLIP_MEAN, CLIP_STD))}

    def projector(features, grid_pool):
        projected = model.projector(features)
        video = int(grid_pool.shape[0]) != int(projected.shape[1])  # an image's grid_pool is the identity
        return {"frame_tokens": pool_grid(projected, cfg.visual.video_pooling_stride if video else 1)}

    def fast_pool(frame_tokens, temporal_pool, spatial_pool):
        _, fast = split_slow_fast(frame_tokens, cfg.visual)
        return {"fast_tokens": fast.reshape(int(temporal_pool.shape[0]), int(spatial_pool.shape[0]), -1)}

    def slow_kv(slow_tokens):
        keys, values = model.decoder.slow_kv(slow_tokens)
        return {f"slow_{kind}_{j}": t for j, pair in enumerate(zip(keys, values)) for kind, t in zip(("key", "value"), pair)}

    def decoder(**feeds):
        logits, new_keys, new_values = model.decoder(
            feeds["inputs_embeds"],
            feeds["position_ids"],
            [feeds[f"past_key_{i}"] for i in range(layers)],
            [feeds[f"past_value_{i}"] for i in range(layers)],
            past_length=feeds["past_length"],
            slow_keys=[feeds[f"slow_key_{j}"] for j in range(hybrid)],
            slow_values=[feeds[f"slow_value_{j}"] for j in range(hybrid)],
            slow_lengths=feeds["slow_lengths"],
            cross_rows=feeds["cross_rows"],
            cross_row_offsets=feeds["cross_row_offsets"],
        )
        out = {"logits": logits}
        for i in range(layers):
            out[f"new_key_{i}"], out[f"new_value_{i}"] = new_keys[i], new_values[i]
        return out

    return {"vision": vision, "projector": projector, "fast_pool": fast_pool, "slow_kv": slow_kv, "decoder": decoder}


def torch_engines(model: SlowFastModel) -> dict[str, TorchEngine]:
    """The stages of ``model`` as engines (any frame count; sequence length up to the caller).

    Tensor descriptions come from the export specs (symbolic in the frame count).
    """
    cfg, dt = model.config, dtype_name(model.dtype)
    specs = S.subgraph_specs(cfg, dt, max_frames=2, max_seq_len=2, vocab_rows=model.vocab_rows)
    infos = {
        "vision": (_infos(specs[S.VISION].inputs), _infos(specs[S.VISION].outputs)),
        "projector": (_infos(specs[S.PROJECTOR].inputs), _infos(specs[S.PROJECTOR].outputs)),
        "fast_pool": (_infos(specs[S.FAST_POOL].inputs), _infos(specs[S.FAST_POOL].outputs)),
        "slow_kv": (_infos(specs[S.SLOW_KV].inputs), _infos(specs[S.SLOW_KV].outputs)),
        "decoder": (_infos(specs[S.DECODER].inputs), _infos(specs[S.DECODER].outputs)),
    }
    # The decoder runs once per generated token on feeds the runtime builds from buffers it
    # allocated itself, so the per-call check is skipped there.
    return {
        name: TorchEngine(name, fn, *infos[name], model.device, validate=name != "decoder")
        for name, fn in _stage_functions(model).items()
    }
