"""PyTorch engines: the model's own modules run eagerly behind the :class:`Engine` interface.

This is the reference backend (``SlowFastRuntime.load(ckpt, backend="torch")``): the same
``SlowFastModel`` the reference generator runs, cut into the stages the exporter writes,
with the same input and output names, so the runtime drives every backend identically.

| engine   | inputs                                              | outputs                          |
|----------|-----------------------------------------------------|----------------------------------|
| vision   | frames (T, S, S, 3) uint8, resized and cropped      | features (T, n, C_vis)           |
| pooler   | features (T, n, C_vis)                              | slow_tokens (Ns, hid), fast_tokens (Nf, hid) |
| slow_kv  | slow_tokens (1, Ns, hidden)                         | slow_key_j, slow_value_j (1, Hkv, Ns, D) |
| decoder  | see ``slowfast_trt.export.specs`` and ``.qwen2``     | logits (1, vocab), new_key_i, new_value_i |

Names are those of :mod:`slowfast_trt.export.specs`. Unlike the exported pooler, these engines
take any frame count, and one ``decoder`` serves prefill and every decode step (with no
attending row it is bit-exact to the exported ``decoder_nocross``).
The vision engine normalises on the host with :func:`slowfast_trt.preprocess.normalize`,
exactly the arithmetic the reference uses, so token ids match the reference bit for bit.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.models.slowfast.visual_tokens import encode_visual_tokens
from slowfast_trt.models.slowfast.model import SlowFastModel
from slowfast_trt.preprocess import normalize
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
        pixels = torch.from_numpy(normalize(frames.cpu().numpy())).to(dev)
        return {"features": model.vision(pixels.to(model.dtype))}

    def pooler(features):
        slow, fast = encode_visual_tokens(features, model.projector, cfg.visual)
        return {"slow_tokens": slow, "fast_tokens": fast}

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

    return {"vision": vision, "pooler": pooler, "slow_kv": slow_kv, "decoder": decoder}


def torch_engines(model: SlowFastModel) -> dict[str, TorchEngine]:
    """The four stages of ``model`` as engines (any frame count; sequence length up to the caller).

    Tensor descriptions come from the export specs; the pooler's are symbolic in the frame
    count here because the eager pooler takes any.
    """
    cfg, dt = model.config, dtype_name(model.dtype)
    specs = S.subgraph_specs(cfg, dt, frames=1, max_seq_len=2, vocab_rows=model.vocab_rows)
    hidden, features = cfg.text.hidden_size, specs[S.VISION].outputs
    pooler_out = (TensorInfo("slow_tokens", dt, ("slow_tokens", hidden)), TensorInfo("fast_tokens", dt, ("fast_tokens", hidden)))
    infos = {
        "vision": (_infos(specs[S.VISION].inputs), _infos(features)),
        "pooler": (_infos(features), pooler_out),
        "slow_kv": (_infos(specs[S.SLOW_KV].inputs), _infos(specs[S.SLOW_KV].outputs)),
        "decoder": (_infos(specs[S.DECODER].inputs), _infos(specs[S.DECODER].outputs)),
    }
    # The decoder runs once per generated token on feeds the runtime builds from buffers it
    # allocated itself, so the per-call check is skipped there.
    return {
        name: TorchEngine(name, fn, *infos[name], model.device, validate=name != "decoder")
        for name, fn in _stage_functions(model).items()
    }
