"""The one place that runs the decoder engines over a KV cache.

Past views in, new rows written into the cache's slots, then committed; with its few per-step
buffers (token, embedding, position, logits) allocated once, a decode step allocates nothing.
How one-token steps run (dynamic, static, CUDA graph) is :mod:`slowfast_trt.runtime.decode_graph`;
static and CUDA-graph steps also embed and sample on the device
(:meth:`DecoderRunner.device_steps`, :mod:`slowfast_trt.runtime.device_sampling`).
"""

from __future__ import annotations

import torch

from slowfast_trt.runtime.decode_graph import StaticStepCache, resolve_decode_steps
from slowfast_trt.runtime.device_sampling import DecodeHead, DeviceSampler, DeviceSteps
from slowfast_trt.models.slowfast.sequence import attend_to_rows
from slowfast_trt.runtime.kv_cache import KVCache, slow_kv_names


class DecoderRunner:
    """Feeds the decoder engines of ``model`` (a ``session.RuntimeModel``) from a KV cache.

    ``video`` arguments are ``session.VideoState`` (slow K/V and lengths) or None.

    Rows that cross-attend go to ``decoder``; steps where none does (``upstream`` decode
    steps, text-only prompts) go to ``decoder_nocross`` when the backend has it: the same
    math without any slow input. One-row decode steps run as ``decode_steps`` says
    (:mod:`.decode_graph`: ``dynamic``, ``static`` or ``cuda-graph``; ``auto`` picks).
    """

    def __init__(self, model, decode_steps: str = "auto"):
        text = model.config.text
        dev, dt = model.device, model.dtype
        self._model = model
        self._engine = model.engines["decoder"]
        self._nocross = model.engines.get("decoder_nocross")
        self.decode_steps = resolve_decode_steps(decode_steps, model.backend, torch.device(dev), self._engine)
        self.prefill_chunk = default_prefill_chunk(model.backend, torch.device(dev))
        self._static = StaticStepCache(capture=self.decode_steps == "cuda-graph")
        logits_info = {i.name: i for i in self._engine.outputs}.get("logits")
        vocab = logits_info.shape[-1] if logits_info and isinstance(logits_info.shape[-1], int) else model.embed_table.shape[0]
        self._logits = torch.zeros((1, vocab), dtype=dt, device=dev)
        table = model.embed_table
        self._token = torch.zeros(1, dtype=torch.long, device=table.device)
        self._embeds_at_table = torch.zeros((1, 1, text.hidden_size), dtype=table.dtype, device=table.device)
        self._embeds = torch.zeros((1, 1, text.hidden_size), dtype=dt, device=dev)
        self._position = torch.zeros((1, 1), dtype=torch.int64, device=dev)
        self._past_length = torch.zeros(1, dtype=torch.int64, device=dev)
        self._rows = {False: torch.zeros(0, dtype=torch.int64, device=dev), True: torch.zeros(1, dtype=torch.int64, device=dev)}
        self._offsets = {
            False: torch.tensor([0, 0], dtype=torch.int32, device=dev),
            True: torch.tensor([0, 1], dtype=torch.int32, device=dev),
        }
        # A text-only prompt has no slow tokens: one zero token with valid length 0 (no row attends).
        hybrid = len(model.config.cross_attn.hybrid_layers)
        empty = torch.zeros((1, text.num_kv_heads, 1, text.head_dim), dtype=dt, device=dev)
        self._no_video = ([empty] * hybrid, [empty] * hybrid, torch.zeros(1, dtype=torch.int32, device=dev))
        self._names = slow_kv_names(hybrid)
        self._sampler = None  # DeviceSampler, made at the first device decode
        self._device_table = table if _same_device(table.device, torch.device(dev)) else None

    def synchronize(self) -> None:
        self._engine.synchronize()

    def _route(self, video, cross_rows, offsets):
        """The engine for a call with ``cross_rows`` attending, and its slow and cross feeds."""
        if video is not None:
            slow_keys, slow_values, lengths = video.slow_keys, video.slow_values, video.slow_lengths
        else:
            slow_keys, slow_values, lengths = self._no_video
        feeds = {}
        for (k_name, v_name), k, v in zip(self._names, slow_keys, slow_values):
            feeds[k_name], feeds[v_name] = k, v
        feeds["slow_lengths"] = lengths
        feeds["cross_rows"] = cross_rows.to(self._model.device)
        feeds["cross_row_offsets"] = offsets.to(self._model.device)
        if self._nocross is not None and cross_rows.numel() == 0:
            return self._nocross, {}
        return self._engine, feeds

    def step(self, kv: KVCache, video, embeds, positions, cross_rows, offsets) -> torch.Tensor:
        """Run ``L`` new rows at the end of ``kv``; they are written into the cache; returns (vocab,) logits."""
        rows = int(embeds.shape[1])
        past_keys, past_values = kv.past()
        key_slots, value_slots = kv.slots(rows)
        engine, fixed = self._route(video, cross_rows, offsets)
        self._past_length.fill_(kv.length)
        feeds = {"inputs_embeds": embeds, "position_ids": positions, "past_length": self._past_length, **fixed}
        outputs = {"logits": self._logits}
        for i, (pk, pv, sk, sv) in enumerate(zip(past_keys, past_values, key_slots, value_slots)):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = pk, pv
            outputs[f"new_key_{i}"], outputs[f"new_value_{i}"] = sk, sv
        engine.run({name: feeds[name] for name in engine.input_names if name in feeds}, outputs)
        kv.commit(rows)
        return self._logits[0]

    def prefill(self, kv: KVCache, video, embeds, positions, attend: torch.Tensor) -> torch.Tensor:
        """Run a prompt's ``L`` rows (``attend``: (L,) bool, the rows that cross-attend) at the
        end of ``kv`` in chunks of ``prefill_chunk`` rows (None: one call); returns the last
        row's (vocab,) logits.

        Each chunk attends to the rows the earlier chunks wrote into the cache, so every row sees
        the same keys as in one call (fp32: same tokens; tested), but a chunk's scores span only
        the rows up to its end: n chunks compute ~(n+1)/2n of the L x (L) scores and masks, and
        hold one chunk's activations instead of the whole prompt's. ONNX Runtime on the CPU
        materialises those scores (the mask Add, Softmax and both products were 85% of its
        prefill), so it takes chunks there; fused attention (torch SDPA, TensorRT) skips the
        masked half by itself and gains nothing from smaller calls."""
        total = int(embeds.shape[1])
        chunk = self.prefill_chunk or total
        logits = None
        for start in range(0, total, chunk):
            end = min(total, start + chunk)
            rows, offsets = attend_to_rows(attend[start:end])
            logits = self.step(kv, video, embeds[:, start:end], positions[:, start:end], rows, offsets)
        return logits

    def decode_step(self, kv: KVCache, video, token: int, position: int, attend: bool):
        """One generated token at ``position``: embeddings and indices go into preallocated buffers."""
        self._token.fill_(token)
        torch.index_select(self._model.embed_table, 0, self._token, out=self._embeds_at_table[0])
        self._embeds.copy_(self._embeds_at_table)
        if self.decode_steps == "dynamic" or position != kv.length:
            self._position.fill_(position)
            return self.step(kv, video, self._embeds, self._position, self._rows[attend], self._offsets[attend])
        self._static_step(kv, video, attend)
        return self._logits[0]

    def _static_step(self, kv: KVCache, video, attend: bool, head: DecodeHead | None = None, commit: bool = True) -> None:
        """One static step at the cache's end (replayed from a CUDA graph when capturing); its row
        is committed unless ``commit`` is False (device steps commit once the loop used the step)."""
        kv.check_fits(1, "the next token")
        engine, fixed = self._route(video, self._rows[attend], self._offsets[attend])
        # decoder_nocross binds nothing of the video: its step (and graph) serves every video.
        bound_video = video if fixed else None
        fixed = {**fixed, "inputs_embeds": self._embeds}
        self._static.get(engine, kv, fixed, self._logits, bound_video, head).run(kv.length)
        if commit:
            kv.commit(1)

    def device_steps(self, kv: KVCache, video, attend: bool, before_step=None, on_step=None) -> DeviceSteps | None:
        """Decode steps for :func:`slowfast_trt.generation.decode_loop` that gather the embedding,
        run the decoder and sample on the device (one CUDA graph per step when capturing), or
        None for ``dynamic`` steps (host sampling). ``before_step()`` runs before each step;
        ``on_step(token)`` is told each generated token whose cache row was committed.

        The embedding table must be on the device: a table kept on the host (an export's
        memory-mapped file) is copied there at the first call (vocab x hidden elements:
        1.1 GB for Qwen2-7B in fp16)."""
        if self.decode_steps == "dynamic":
            return None
        if self._sampler is None:
            dev = torch.device(self._model.device)
            self._device_table = self._device_table if self._device_table is not None else self._model.embed_table.to(dev)
            self._sampler = DeviceSampler(int(self._logits.shape[-1]), dev)

        def make_head(program):
            return DecodeHead(self._device_table, self._embeds, self._logits, self._sampler, program)

        return DeviceSteps(self._sampler, make_head, lambda head: self._static_step(kv, video, attend, head, commit=False),
                           kv, before_step=before_step, on_step=on_step)

    def close(self) -> None:
        """Release every static step and CUDA graph (before the engines they run on close)."""
        self._static.release_all()

    def forget_released(self) -> None:
        """Drop static steps (and their CUDA graphs) bound to a released cache or video, so
        their memory can go."""
        self._static.drop_released()


# Rows per prefill call on ONNX Runtime (CPU); chosen by measurement (docs/performance.md).
ORT_CPU_PREFILL_CHUNK = 512


def default_prefill_chunk(backend: str, device: torch.device) -> int | None:
    """Rows per prefill call: chunks where attention is materialised (ONNX Runtime on the CPU),
    one call elsewhere (see :meth:`DecoderRunner.prefill`)."""
    return ORT_CPU_PREFILL_CHUNK if backend == "onnxruntime" and device.type == "cpu" else None


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)  # "cuda" is the current device, 0 here
