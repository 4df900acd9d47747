"""A LongVU checkpoint (+ its two towers) -> an export folder: ONNX graphs, tokenizer, manifest.

:func:`export_longvu_checkpoint` validates the request (output folder, precision, sequence
limit, the checkpoint and both towers by their headers) before writing, then exports one part at
a time (each part loaded alone, exported, freed: DINOv2-giant, SigLIP, the connector, the decoder,
the embedding table) into a temporary sibling folder that is renamed into place at the end, like
the Slow-Fast pipeline (:mod:`slowfast_trt.export.pipeline`, whose folder helpers it uses).

The manifest carries ``"family": "longvu"`` (``SlowFastRuntime.load`` picks the family from it),
the parsed config, both towers' folders and fingerprints, and ``frames: null`` (LongVU samples
one frame per second, there is no frame count; every graph takes 1..64 frames per call).
``custom_op`` is null: no LongVU graph uses the Slow-Fast cross-attention op.

Precisions: ``fp32``, ``fp16`` and ``int4-awq`` (the decoder's projections as INT4 weight-only with
AWQ scales from the built-in calibration prompts, :mod:`slowfast_trt.export.awq` and
:mod:`slowfast_trt.export.quantize_int4`, shared with Slow-Fast: the LongVU decoder is the same
Qwen2 layer; activations float16 for TensorRT, float32 for ONNX Runtime; the towers and the
connector stay in the activation dtype). ONNX Runtime or TensorRT parses the same files; building
TensorRT engines for LongVU is not wired up yet: ``--backend tensorrt`` needs ``--onnx-only``.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from slowfast_trt import dtypes

__all__ = ["DEFAULT_EXTRA_POSITIONS", "LongVUExportRequest", "export_longvu_checkpoint", "plan_longvu_export"]

DEFAULT_EXTRA_POSITIONS = 1024  # default max_seq_len = tokenizer_model_max_length + this (answers, follow-ups)
_PRECISIONS = ("fp32", "fp16", "int4-awq")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LongVUExportRequest:
    ckpt: str
    out: str | Path
    backend: str = "onnxruntime"
    precision: str = "fp32"
    max_seq_len: int | None = None
    siglip: str | Path | None = None
    dino: str | Path | None = None
    onnx_only: bool = False
    force: bool = False


@dataclass(frozen=True)
class LongVUExportPlan:
    request: LongVUExportRequest
    folders: object  # models.longvu.checkpoint.LongVUFolders
    out: Path
    precision: str
    dtype: str
    max_seq_len: int
    vocab_rows: int


def plan_longvu_export(request: LongVUExportRequest) -> LongVUExportPlan:
    """Check everything (names, shapes, sizes) before a byte is written."""
    from slowfast_trt.export.pipeline import check_output
    from slowfast_trt.models.longvu.checkpoint import open_model, resolve_folders
    from slowfast_trt.tokenizer import load_tokenizer

    out = Path(request.out)
    check_output(out, request.force)
    precision = dtypes.normalize_precision(request.precision)
    if precision not in _PRECISIONS:
        raise ValueError(f"--precision {request.precision}: LongVU exports fp32, fp16 or int4-awq (bf16: not yet)")
    if request.backend == "tensorrt" and not request.onnx_only:
        raise ValueError("--backend tensorrt: building TensorRT engines for LongVU is not wired up yet; add --onnx-only "
                         "(the ONNX graphs parse in TensorRT) or use --backend onnxruntime")
    folders = resolve_folders(request.ckpt, request.siglip, request.dino)
    if out.resolve() == folders.checkpoint.resolve() or out.resolve() in folders.checkpoint.resolve().parents:
        raise ValueError(f"--out {out}: must not be the checkpoint folder {folders.checkpoint} or contain it")
    vocab_rows = len(load_tokenizer(folders.checkpoint))
    model, _ = open_model(folders, vocab_rows)  # names and shapes of all three folders, no weights
    text = model.config.text
    limit = text.max_position_embeddings
    length = request.max_seq_len or min(limit, model.config.max_length + DEFAULT_EXTRA_POSITIONS)
    if isinstance(length, bool) or not isinstance(length, int) or not model.config.max_length < length <= limit:
        raise ValueError(
            f"--max-seq-len {length}: must exceed tokenizer_model_max_length {model.config.max_length} (the longest "
            f"prompt) and be at most max_position_embeddings {limit}"
        )
    return LongVUExportPlan(request, folders, out, precision, dtypes.graph_dtype(precision, request.backend), length,
                            vocab_rows)


def _manifest(plan: LongVUExportPlan, model, specs: dict, copied: list[str]) -> dict:
    from slowfast_trt._version import __version__
    from slowfast_trt.export.manifest import FORMAT, HASH_METHOD, checkpoint_fingerprint, subgraph_entry
    from slowfast_trt.models.longvu.family import LONGVU
    from slowfast_trt.models.qwen2.layers import KV_CACHE_LAYOUT

    text, f = model.config.text, plan.folders
    towers = {which: {"folder": str(getattr(f, which)), "hash": checkpoint_fingerprint(getattr(f, which))}
              for which in ("siglip", "dino")}
    return {
        "format": FORMAT, "package_version": __version__, "family": LONGVU.name,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"checkpoint": plan.request.ckpt, "resolved": str(f.checkpoint),
                   "hash": checkpoint_fingerprint(f.checkpoint), "hash_method": HASH_METHOD, "towers": towers},
        "config": asdict(model.config),
        "towers": {"siglip": asdict(model.siglip.config), "dino": asdict(model.dino.config)},
        "precision": plan.precision, "dtype": plan.dtype, "frames": None, "max_frames": None,
        "max_seq_len": plan.max_seq_len, "vocab_rows": plan.vocab_rows,
        "subgraphs": {name: subgraph_entry(spec) for name, spec in specs.items()},
        "custom_op": None,
        "layouts": {"kv_cache": {"layout": KV_CACHE_LAYOUT, "per_layer": text.num_layers, "dtype": plan.dtype,
                                 "shape": ["batch", plan.max_seq_len, text.num_kv_heads, text.head_dim]}},
        "backend": plan.request.backend, "engines": None, "trt_lint": None, "checkpoint_files": copied,
    }


def _awq(model, plan: LongVUExportPlan, progress: Progress) -> dict:
    """AWQ scales of the decoder (float32 calibration on the built-in prompts), folded in place;
    the decoder then goes to the activation dtype."""
    from slowfast_trt.dtypes import parse_model_dtype
    from slowfast_trt.export.awq import apply_awq
    from slowfast_trt.tokenizer import load_tokenizer

    progress("AWQ: searching per-channel scales on the calibration prompts")
    report = apply_awq(model, tokenizer=load_tokenizer(plan.folders.checkpoint))
    model.decoder.to(parse_model_dtype(plan.dtype))
    model.embed_tokens.to(parse_model_dtype(plan.dtype))
    return report


def _quantize(stage: Path, awq: dict, progress: Progress) -> None:
    import json

    from slowfast_trt.export.quantize_int4 import REPORT_FILE, default_selector, quantize_decoder_onnx

    progress("rewriting the decoder weights to INT4")
    report = quantize_decoder_onnx(stage, files=("decoder.onnx",), select=default_selector(False))
    payload = {"scheme": "int4 weight-only, symmetric, blockwise along the input dim", "awq": awq, **report.to_json()}
    (stage / REPORT_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def run_longvu_export(plan: LongVUExportPlan, progress: Progress = lambda m: None) -> dict:
    """Export part by part into a staging folder, then rename it to ``plan.out``; -> manifest."""
    from slowfast_trt.export.longvu_subgraphs import STEPS, export_step
    from slowfast_trt.export.manifest import folder_files, write_manifest
    from slowfast_trt.export.pipeline import commit_stage, copy_checkpoint_files, make_stage
    from slowfast_trt.models.longvu.checkpoint import load_model

    parts = {"embed": "embed", "dino": "dino", "siglip": "siglip", "connector": "connector", "decoder": "decoder"}
    stage = make_stage(plan.out)
    try:
        specs, model = {}, None
        for n, name in enumerate(STEPS, 1):
            progress(f"[{n}/{len(STEPS)}] {name}: loading")
            int4 = name == "decoder" and plan.precision == "int4-awq"
            model = load_model(plan.folders.checkpoint, dtype="float32" if int4 else plan.dtype,
                               vocab_rows=plan.vocab_rows, siglip=plan.folders.siglip, dino=plan.folders.dino,
                               parts=["embed", "decoder"] if int4 else [parts[name]])
            if int4:
                awq = _awq(model, plan, progress)
            progress(f"[{n}/{len(STEPS)}] {name}: exporting")
            specs[name] = export_step(model, name, stage, plan.dtype, plan.max_seq_len)
            if int4:
                _quantize(stage, awq, progress)
            if n < len(STEPS):
                model = None
                gc.collect()
        copied = copy_checkpoint_files(plan.folders.checkpoint, stage)
        manifest = _manifest(plan, model, specs, copied)
        manifest["files"] = folder_files(stage)
        write_manifest(stage, manifest)
        commit_stage(stage, plan.out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    progress(f"done: {plan.out}")
    return manifest


def export_longvu_checkpoint(request: LongVUExportRequest, progress: Progress = lambda m: None):
    """Validate, then export: -> (plan, manifest)."""
    plan = plan_longvu_export(request)
    return plan, run_longvu_export(plan, progress)
