"""Loading LongVU: the checkpoint (``cambrian_qwen``: LLM, connector, projector) and its two towers.

As upstream (``builder.py`` ``load_pretrained_model``), the towers are not in the checkpoint:
they are loaded by their hard-coded Hugging Face ids (``google/siglip-so400m-patch14-384``,
``facebook/dinov2-giant``; quirk 1) through ``huggingface_hub``'s cache (downloaded when online,
read from the cache offline), or from local folders (``siglip=``, ``dino=``). A tower that is
neither cached nor downloadable, or whose width does not fit the checkpoint's per-tower projector
(quirk 2: upstream sizes ``mm_projector_aux_0`` for so400m's hard-coded 1152), is a one-line
``ValueError``. Every tensor is mapped through the rename tables of
:mod:`slowfast_trt.models.longvu.weights` with a shape check per key; the embedding and the LM
head keep the first ``vocab_rows`` rows (upstream ``resize_token_embeddings(len(tokenizer))``,
quirk 17).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from slowfast_trt.checkpoint_files import CheckpointReader, resolve_checkpoint
from slowfast_trt.dtypes import parse_model_dtype
from slowfast_trt.models.longvu.config import (
    DINO_REPO_ID, SIGLIP_PIXELS, SIGLIP_REPO_ID, LongVUConfig, TowerConfig,
)
from slowfast_trt.models.longvu.model import LongVUModel
from slowfast_trt.models.longvu.weights import DINO_RULES, LONGVU_RULES, SIGLIP_RULES, plan_mapping

__all__ = ["PARTS", "LongVUFolders", "load_model", "resolve_folders", "resolve_tower"]

# Parts that can be loaded alone: name -> parameter-name prefix.
PARTS = {"siglip": "siglip.", "dino": "dino.", "connector": "connector.", "embed": "embed_tokens.",
         "decoder": "decoder."}
_TOWERS = {"siglip": ("SigLIP", SIGLIP_REPO_ID, "--siglip"), "dino": ("DINOv2", DINO_REPO_ID, "--dino")}


def resolve_tower(which: str, local: str | os.PathLike | None = None) -> Path:
    """The folder of tower ``which`` ("siglip" / "dino"): ``local``, or its hub id in the HF cache."""
    label, repo_id, option = _TOWERS[which]
    if local is not None:
        path = Path(local)
        if not path.is_dir():
            raise ValueError(f"{option} {local}: {label} tower folder not found")
        return path
    try:
        return resolve_checkpoint(repo_id)
    except ValueError as exc:
        detail = str(exc).split("failed (", 1)[-1].rstrip(")")
        raise ValueError(
            f"LongVU's {label} tower {repo_id} is not in the Hugging Face cache and cannot be downloaded "
            f"({detail}); download it once, or pass its folder with {option}"
        ) from None


@dataclass(frozen=True)
class LongVUFolders:
    """Where a LongVU model's three parts are."""

    checkpoint: Path
    siglip: Path
    dino: Path


def resolve_folders(ckpt, siglip=None, dino=None) -> LongVUFolders:
    """The checkpoint folder (local or a hub id) and both tower folders."""
    return LongVUFolders(resolve_checkpoint(ckpt), resolve_tower("siglip", siglip), resolve_tower("dino", dino))


def _tower_config(folder: Path, which: str, projector_in: int) -> TowerConfig:
    label, repo_id, option = _TOWERS[which]
    cfg = TowerConfig.from_file(folder / "config.json", "siglip" if which == "siglip" else "dinov2")
    if cfg.hidden_size != projector_in:
        aux = 0 if which == "siglip" else 1
        raise ValueError(
            f"{folder}: {label} tower of width {cfg.hidden_size}, but the checkpoint's mm_projector_aux_{aux} takes "
            f"{projector_in} (the {repo_id} tower upstream loads); pass the right tower with {option}"
        )
    if which == "siglip" and cfg.image_size != SIGLIP_PIXELS:
        raise ValueError(
            f"{folder}: SigLIP tower for {cfg.image_size} px; upstream runs it at {SIGLIP_PIXELS} px without "
            f"interpolating positions (the {repo_id} tower)"
        )
    return cfg


def _projector_width(reader: CheckpointReader, aux: int, source: Path) -> int:
    name = f"model.mm_projector_aux_{aux}.0.weight"
    shape = reader.shapes.get(name)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{source}: checkpoint has no {name} (not a LongVU/Cambrian SVA checkpoint)")
    return int(shape[1])


def _sources(report, reader: CheckpointReader, model_shapes, rows) -> dict[str, tuple[CheckpointReader, str, int | None]]:
    out = {}
    for upstream, ours in report.mapping.items():
        keep = model_shapes[ours][0] if ours in rows and reader.shapes[upstream][0] != model_shapes[ours][0] else None
        out[ours] = (reader, upstream, keep)
    return out


def open_model(folders: LongVUFolders, vocab_rows: int | None = None):
    """(model on the meta device, our name -> (reader, upstream name, rows kept)); names and shapes
    of all three folders checked, no weight read."""
    config = LongVUConfig.from_file(folders.checkpoint / "config.json")
    reader = CheckpointReader(folders.checkpoint)
    siglip = _tower_config(folders.siglip, "siglip", _projector_width(reader, 0, folders.checkpoint))
    dino = _tower_config(folders.dino, "dino", _projector_width(reader, 1, folders.checkpoint))
    if vocab_rows is not None and not 0 < vocab_rows <= config.text.vocab_size:
        raise ValueError(
            f"{folders.checkpoint}: tokenizer length {vocab_rows} exceeds config vocab_size {config.text.vocab_size}")
    with torch.device("meta"):
        model = LongVUModel(config, siglip, dino, vocab_rows)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    sources: dict = {}
    rows = {"embed_tokens.weight": model.vocab_rows, "decoder.lm_head.weight": model.vocab_rows}
    for folder, rules, prefix, what in (
        (folders.checkpoint, LONGVU_RULES, ("decoder.", "connector.", "embed_tokens."), "LongVU checkpoint"),
        (folders.siglip, SIGLIP_RULES, ("siglip.",), "SigLIP tower"),
        (folders.dino, DINO_RULES, ("dino.",), "DINOv2 tower"),
    ):
        file_reader = reader if folder == folders.checkpoint else CheckpointReader(folder)
        part = {n: s for n, s in shapes.items() if n.startswith(prefix)}
        if config.text.tie_word_embeddings and folder == folders.checkpoint:
            part.pop("decoder.lm_head.weight", None)
        report = plan_mapping(rules, file_reader.shapes, part, row_overrides=rows)
        if not report.ok:
            raise ValueError(report.error_message(str(folder), what))
        sources.update(_sources(report, file_reader, shapes, rows))
    if config.text.tie_word_embeddings:
        sources["decoder.lm_head.weight"] = sources["embed_tokens.weight"]
    return model, sources


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    module._parameters[attr] = nn.Parameter(value, requires_grad=False)


def load_model(
    ckpt: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    vocab_rows: int | None = None,
    device: str | torch.device = "cpu",
    siglip: str | os.PathLike | None = None,
    dino: str | os.PathLike | None = None,
    parts: Iterable[str] | None = None,
) -> LongVUModel:
    """Load a LongVU checkpoint and its towers into :class:`LongVUModel`.

    ``siglip`` / ``dino``: local tower folders instead of the hub ids. ``parts``: load only these
    (keys of :data:`PARTS`); the other parameters stay on the meta device.
    """
    if parts is not None and set(parts) - set(PARTS):
        raise ValueError(f"unknown model parts {sorted(set(parts) - set(PARTS))} (known: {', '.join(PARTS)})")
    torch_dtype = parse_model_dtype(dtype)
    folders = resolve_folders(ckpt, siglip, dino)
    model, sources = open_model(folders, vocab_rows)
    prefixes = tuple(PARTS[p] for p in parts) if parts is not None else ("",)
    loaded: dict[tuple, torch.Tensor] = {}
    for name, (reader, upstream, rows) in sources.items():
        if not name.startswith(prefixes):
            continue
        key = (id(reader), upstream, rows)
        if key not in loaded:
            tensor = reader.tensor(upstream)
            tensor = tensor if rows is None else tensor[:rows]
            loaded[key] = tensor.to(device=device, dtype=torch_dtype).contiguous()
        _assign(model, name, loaded[key])
    if parts is None or "dino" in parts:
        model.dino.set_positions()
    model.folders = folders
    return model.eval()
