"""Export LongVU as ONNX subgraphs (tensor table: :mod:`slowfast_trt.models.longvu.specs`).

:func:`export_longvu` writes, into one folder:

* ``dino.onnx``: uint8 frames (N, 378, 378, 3) -> DINOv2 features (N, 576, C_d); normalisation,
  the 378 px position table (computed once at load, an initializer) and the 27 -> 24 bilinear
  resize inside;
* ``siglip.onnx``: uint8 frames (N, 384, 384, 3) -> SigLIP features (N, 576, C_s) (the last
  encoder layer, no post-layernorm, no head);
* ``connector.onnx``: both towers' features of N kept frames + the per-video ``cell_bias`` ->
  high-resolution (N, 144, hid) and low-resolution (N, 64, hid) tokens (the two projector calls);
* ``decoder.onnx``: the plain Qwen2 decoder (:class:`slowfast_trt.models.qwen2.decoder.Qwen2Decoder`)
  with the tensors of Slow-Fast's ``decoder_nocross``, for prefill and decode steps;
* ``embed_tokens.npy``: the (vocab_rows, hid) embedding table, gathered by the runtime;
* ``image_newline.npy``: the (hid,) newline token the host appends to every row of a frame.

What runs between them on the host (selection, mode, unpad + newline, upgrade, drop, splice) is
:mod:`slowfast_trt.models.longvu.pipeline`. N is at most ``specs.CHUNK`` (64); the runtime runs
more frames in chunks. Weights go to one external-data file per graph
(:func:`slowfast_trt.export.onnx_io.export_graph`); the model must be loaded (parts may be
loaded one at a time, see ``export.longvu_pipeline``).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from slowfast_trt.dtypes import parse_model_dtype
from slowfast_trt.export.onnx_io import ExportGraph, export_graph
from slowfast_trt.models.longvu import specs as S
from slowfast_trt.models.longvu.model import LongVUModel

NEWLINE_FILE = "image_newline.npy"
__all__ = ["NEWLINE_FILE", "ConnectorGraph", "DecoderGraph", "TowerGraph", "export_longvu", "export_step", "longvu_specs"]


class TowerGraph(ExportGraph):
    """uint8 frames -> tower features (SigLIP or DINOv2)."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower

    def compute(self, frames: torch.Tensor) -> torch.Tensor:
        return self.tower(frames)


class ConnectorGraph(ExportGraph):
    """Both towers' features + cell_bias -> high and low tokens."""

    def __init__(self, connector: torch.nn.Module):
        super().__init__()
        self.connector = connector

    def compute(self, siglip_features, dino_features, cell_bias):
        return self.connector(siglip_features, dino_features, cell_bias)


class DecoderGraph(ExportGraph):
    """Flat-argument wrapper of :class:`Qwen2Decoder` in the order of the decoder spec."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder

    def compute(self, inputs_embeds, position_ids, past_length, *past):
        logits, keys, values = self.decoder(inputs_embeds, position_ids, list(past[0::2]), list(past[1::2]), past_length)
        return (logits, *(t for pair in zip(keys, values) for t in pair))


def longvu_specs(model: LongVUModel, precision: str, max_seq_len: int) -> dict[str, S.SubgraphSpec]:
    return S.subgraph_specs(model.config, model.siglip.out_dim, model.dino.out_dim, precision, max_seq_len,
                            model.vocab_rows)


def _dynamic_axes(spec: S.SubgraphSpec) -> dict[str, dict[int, str]]:
    return {t.name: {a: d for a, d in enumerate(t.shape) if isinstance(d, str)}
            for t in spec.inputs + spec.outputs if any(isinstance(d, str) for d in t.shape)}


def _example(t: S.TensorSpec, sizes: dict, device, gen: torch.Generator) -> torch.Tensor:
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.shape)
    if t.dtype == "uint8":
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)
    return torch.randn(shape, generator=gen).to(device=device, dtype=parse_model_dtype(t.dtype))


def _decoder_args(spec: S.SubgraphSpec, device, gen, seq: int = 3, past: int = 2) -> list:
    args = []
    for t in spec.inputs:
        if t.name == "position_ids":
            args.append(torch.arange(past, past + seq, device=device)[None])
        elif t.name == "past_length":
            args.append(torch.tensor([past], device=device))
        else:
            args.append(_example(t, {"seq": seq, "past": past}, device, gen))
    return args


def _write(module: ExportGraph, spec: S.SubgraphSpec, args, out_dir: Path) -> S.SubgraphSpec:
    shapes = {t.name: t.shape for t in spec.inputs + spec.outputs}
    export_graph(module, args, out_dir / spec.file, spec.data_file, spec.input_names, spec.output_names, shapes,
                 _dynamic_axes(spec))
    return spec


def _save_embedding(model: LongVUModel, spec: S.SubgraphSpec, out_dir: Path) -> S.SubgraphSpec:
    np.save(out_dir / spec.file, model.embed_tokens.weight.detach().cpu().numpy())
    return spec


def export_step(model: LongVUModel, name: str, out_dir: Path, precision: str, max_seq_len: int) -> S.SubgraphSpec:
    """Export one subgraph ``name`` of ``model`` (already in ``precision``) into ``out_dir``."""
    out_dir = Path(out_dir)
    spec = longvu_specs(model, precision, max_seq_len)[name]
    gen = torch.Generator().manual_seed(0)
    part = {S.DINO: model.dino, S.SIGLIP: model.siglip, S.CONNECTOR: model.connector, S.DECODER: model.decoder,
            S.EMBED: model.embed_tokens}[name]
    device = next((p.device for p in part.parameters() if not p.is_meta), torch.device("cpu"))
    with torch.no_grad():
        if name == S.EMBED:
            return _save_embedding(model, spec, out_dir)
        if name in (S.DINO, S.SIGLIP):
            tower = model.dino if name == S.DINO else model.siglip
            return _write(TowerGraph(tower), spec, [_example(spec.inputs[0], {"frames": 2}, device, gen)], out_dir)
        if name == S.CONNECTOR:
            args = [_example(t, {"frames": 3}, device, gen) for t in spec.inputs[:2]]
            bias = torch.zeros(spec.inputs[2].shape, dtype=torch.float32, device=device)
            bias[0, :2] = float("-inf")  # a partly masked cell, as in a landscape frame
            np.save(out_dir / NEWLINE_FILE, model.connector.image_newline.detach().cpu().numpy())
            return _write(ConnectorGraph(model.connector), spec, args + [bias], out_dir)
        return _write(DecoderGraph(model.decoder), spec, _decoder_args(spec, device, gen), out_dir)


STEPS = (S.EMBED, S.DINO, S.SIGLIP, S.CONNECTOR, S.DECODER)


def export_longvu(model: LongVUModel, out_dir: Path, precision: str, max_seq_len: int,
                  progress: Callable[[str], None] = lambda msg: None) -> dict[str, S.SubgraphSpec]:
    """Every subgraph of a loaded :class:`LongVUModel` (converted in place to ``precision``)."""
    dtype = parse_model_dtype(precision)
    if model.dtype != dtype:
        model.to(dtype)
        model.dino.set_positions()
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    done = {}
    for n, name in enumerate(STEPS, 1):
        progress(f"[{n}/{len(STEPS)}] {name}")
        done[name] = export_step(model, name, Path(out_dir), precision, max_seq_len)
        gc.collect()
    return done
