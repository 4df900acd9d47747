"""A checkpoint -> an export folder (ONNX graphs, manifest, engines): the export pipeline.

:func:`export_checkpoint` (an :class:`ExportRequest`, i.e. the export CLI's arguments) validates
everything against the checkpoint's config and tensor headers before writing a byte, then writes.
``bf16`` exports float32 graphs that TensorRT builds with its BF16 flag (ONNX opset 17 has no
bf16 convolutions and ONNX Runtime no bf16 CPU kernels), so it needs ``--backend tensorrt``.
``int4-awq`` exports a decoder with 4-bit weights (group 128, AWQ scales from built-in
calibration prompts; :mod:`slowfast_trt.export.quantize_int4`), activations in float16 for
TensorRT and float32 for ONNX Runtime; it loads the whole model (no part-by-part streaming).

One export serves every video of 1..``max_frames`` frames (``--max-frames``, default the
checkpoint's training frames, or ``--frames`` when larger; ``--frames`` is then only the default
count sampled from a file): the frame count is data for the graphs, see
:mod:`slowfast_trt.models.slowfast.specs`.

The folder gets the ONNX subgraphs (``export_all``), the tokenizer files and ``config.json``
of the checkpoint, and ``manifest.json`` (:mod:`slowfast_trt.export.manifest`). With
``--backend tensorrt`` it also gets ``*.trt.onnx`` copies without the custom op's local
function (what TensorRT parses), their lint results, and, unless ``--onnx-only``, engines.

Everything is written into a temporary sibling folder (``.DIR.partial-*``) that is renamed to
``DIR`` at the end: a failed export leaves nothing behind (a process killed with SIGKILL
leaves its hidden partial folder), and with ``--force`` the old export survives a failed one.
A non-empty ``DIR`` is refused without ``--force``, and ``--force`` only replaces a folder
holding a ``manifest.json`` (a previous export). Bad input is a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from slowfast_trt import dtypes
BACKENDS = ("tensorrt", "onnxruntime")
DEFAULT_MAX_SEQ_LEN = 4096
# Files of a checkpoint folder that are not weights: tokenizer, config, generation config.
_COPY_SUFFIXES = {".json", ".txt", ".model", ".tiktoken"}
_NOT_COPIED = {"model.safetensors.index.json", "pytorch_model.bin.index.json"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportPlan:
    """Everything decided and validated before the first byte is written."""

    ckpt: str
    directory: Path
    out: Path
    backend: str
    precision: str
    frames: int  # the default frames sampled from a file
    max_seq_len: int
    build_engines: bool
    visual_tokens: dict
    max_frames: int = 0  # the graphs serve every video of 1..max_frames frames (0: frames)

    @property
    def frame_range(self) -> tuple[int, int]:
        return 1, self.max_frames or self.frames


def tensorrt_missing() -> str | None:
    """None when ``import tensorrt`` works, else why not."""
    from slowfast_trt.trt_import import tensorrt_import_error

    return tensorrt_import_error()


def check_output(out: Path, force: bool) -> None:
    """``out`` must be absent, empty, or (with ``force``) a previous export folder.

    ``--force`` never replaces a folder without ``manifest.json``: a mistyped ``--out ~`` must
    not delete a home folder. Every folder this CLI writes has a manifest (it is renamed into
    place only when complete).
    """
    from slowfast_trt.export.manifest import MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ValueError(f"--out {out}: folder is not empty (use --force to replace a previous export)")
    if not (out / MANIFEST_NAME).is_file():
        raise ValueError(
            f"--out {out}: not empty and not an export folder (no {MANIFEST_NAME}); --force only replaces exports"
        )


def visual_token_counts(frames: int, config, vision_grid: int) -> dict:
    """Slow/fast token counts of a ``frames``-frame video, by running the real pooling code on zeros."""
    import torch

    from slowfast_trt.models.slowfast.visual_tokens import (
        fast_frame_count,
        pool_grid,
        split_slow_fast,
        video_pooling_stride,
    )

    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    visual = config.visual
    where = (
        f"the {vision_grid}x{vision_grid} grid of this checkpoint (mm_video_pooling_stride {visual.video_pooling_stride}, "
        f"fast_token_spatial_stride {visual.fast_spatial_stride})"
    )
    features = torch.zeros(frames, vision_grid * vision_grid, 1)
    try:
        pooled = pool_grid(features, video_pooling_stride(frames, visual))
        slow, fast = split_slow_fast(pooled, visual)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--frames {frames}: the visual pooling cannot run on {where}: {exc}") from None
    if slow.shape[0] == 0 or fast.shape[0] == 0:
        raise ValueError(f"--frames {frames}: gives {slow.shape[0]} slow / {fast.shape[0]} fast tokens on {where}")
    return {
        "slow": int(slow.shape[0]),
        "fast": int(fast.shape[0]),
        "slow_per_frame": int(pooled.shape[1]),
        "fast_frames": fast_frame_count(frames, config.visual),
        "vision_grid": vision_grid,
    }


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the export CLI's arguments, as a library call takes them."""

    ckpt: str
    out: str | Path
    backend: str = "tensorrt"
    precision: str = "fp16"
    frames: int | None = None  # default frames per video file (default: training frames, at most max_frames)
    max_seq_len: int | None = None
    max_frames: int | None = None  # most frames per video (default: the training frames, or frames if more)
    onnx_only: bool = False
    force: bool = False


def export_checkpoint(request: ExportRequest, progress: Progress = lambda message: None) -> tuple[ExportPlan, dict]:
    """Validate ``request`` against the checkpoint, then export: -> (plan, manifest)."""
    plan = plan_export(request)
    return plan, run_export(plan, progress)


def plan_export(args: ExportRequest) -> ExportPlan:
    """Validate the arguments against the checkpoint (config and tensor headers only, no weights)."""
    from slowfast_trt.models.slowfast.checkpoint import CheckpointReader, resolve_checkpoint
    from slowfast_trt.models.slowfast.config import SlowFastConfig
    from slowfast_trt.models.slowfast.weight_names import vision_relative_shapes
    from slowfast_trt.models.slowfast.convnext import ConvNeXtSpec

    out = Path(args.out)
    check_output(out, args.force)
    if args.onnx_only and args.backend != "tensorrt":
        raise ValueError("--onnx-only goes with --backend tensorrt (--backend onnxruntime builds no engines anyway)")
    if args.precision == "bf16" and args.backend != "tensorrt":
        raise ValueError(
            "--precision bf16 needs --backend tensorrt (the ONNX graphs stay float32 and TensorRT builds them "
            "in bf16; ONNX Runtime has no bf16 CPU kernels): use fp32 or fp16 with onnxruntime"
        )
    build_engines = args.backend == "tensorrt" and not args.onnx_only
    if build_engines:
        why = tensorrt_missing()
        if why:
            raise ValueError(
                f"TensorRT is not installed: import tensorrt failed ({why}); use --onnx-only or --backend onnxruntime"
            )
    directory = resolve_checkpoint(args.ckpt)
    if out.resolve() == directory.resolve() or out.resolve() in directory.resolve().parents:
        raise ValueError(f"--out {out}: must not be the checkpoint folder {directory} or contain it")
    config = SlowFastConfig.from_file(directory / "config.json")
    reader = CheckpointReader(directory)
    spec = ConvNeXtSpec.from_shapes(vision_relative_shapes(reader.shapes), source=config.source)
    grid = config.visual.image_size // spec.stride
    frames, max_frames = _frame_range(args, config)
    counts = visual_token_counts(frames, config, grid)
    counts.update(_range_counts(max_frames, config, grid))
    max_seq_len = args.max_seq_len if args.max_seq_len is not None else DEFAULT_MAX_SEQ_LEN
    if max_seq_len <= counts["max_fast"]:
        raise ValueError(
            f"--max-seq-len {max_seq_len}: must exceed the {counts['max_fast']} fast tokens of the longest video "
            f"(1..{max_frames} frames; they sit in the prompt with the text)"
        )
    if max_seq_len > config.text.max_position_embeddings:
        raise ValueError(
            f"--max-seq-len {max_seq_len}: exceeds max_position_embeddings "
            f"{config.text.max_position_embeddings} of the checkpoint"
        )
    return ExportPlan(
        ckpt=str(args.ckpt), directory=directory, out=out, backend=args.backend, precision=args.precision,
        frames=frames, max_seq_len=max_seq_len, build_engines=build_engines, visual_tokens=counts,
        max_frames=max_frames,
    )


def _frame_range(args: "ExportRequest", config) -> tuple[int, int]:
    """(default frames, max frames): ``--max-frames`` defaults to the training frames (or
    ``--frames`` when larger); ``--frames`` to the training frames, at most ``--max-frames``."""
    for flag, value in (("--frames", args.frames), ("--max-frames", args.max_frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    training = config.training_frames
    max_frames = args.max_frames if args.max_frames is not None else max(training, args.frames or 0)
    frames = args.frames if args.frames is not None else min(training, max_frames)
    if frames > max_frames:
        raise ValueError(f"--frames {frames}: exceeds --max-frames {max_frames} (the most frames the graphs serve)")
    return frames, max_frames


def _range_counts(max_frames: int, config, vision_grid: int) -> dict:
    """The largest slow and fast token counts over videos of 1..max_frames frames."""
    from slowfast_trt.models.slowfast.specs import frame_bounds

    for frames in sorted({1, 2, max_frames}):  # every pooling branch and grid the range reaches
        visual_token_counts(frames, config, vision_grid)
    bounds = frame_bounds(config, max_frames)
    return {"max_frames": max_frames, "max_slow": bounds.max_slow, "max_fast": bounds.max_fast}


def graph_dtype(plan: "ExportPlan") -> str:
    """dtype of the exported ONNX graphs (and of the KV cache the runtime allocates)."""
    return dtypes.graph_dtype(plan.precision, plan.backend)


def make_stage(out: Path) -> Path:
    """An empty temporary folder beside ``out`` (same file system, so the final rename is atomic)."""
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        # mkdtemp makes the folder 0700; the export is renamed into place as it is, so give it
        # what mkdir would (0777 less the umask): another user or a container can read it.
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)
        return stage
    except OSError as exc:
        raise OSError(f"--out {out}: cannot write into {parent} ({exc.strerror or exc})") from None


def commit_stage(stage: Path, out: Path) -> None:
    """Put ``stage`` in place of ``out``; an existing ``out`` is kept until the new one is in place."""
    if not out.exists():
        os.rename(stage, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def copy_checkpoint_files(directory: Path, stage: Path) -> list[str]:
    """Tokenizer files, config.json and generation_config.json (every non-weight top-level file)."""
    copied = []
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix in _COPY_SUFFIXES and f.name not in _NOT_COPIED:
            shutil.copy2(f, stage / f.name)
            copied.append(f.name)
    return copied


def _relative(stage: Path, file: str | Path) -> str:
    path = Path(file)
    return str(path.relative_to(stage) if path.is_absolute() else path)


def _build_engines(stage: Path, specs: dict, trt_files: dict[str, str], plan: ExportPlan, progress: Progress) -> dict:
    """Hook for the engine build (``slowfast_trt.export.trt_build``, a later issue).

    Expected: ``build_engines(stage, trt_files, specs, precision=, frames= (the most), max_seq_len=,
    progress=, opt_frames=) -> {subgraph name: engine file relative to stage}``, building from the stripped
    ``*.trt.onnx`` files. A failure raises; the stage folder is then removed by the caller.
    """
    try:
        from slowfast_trt.export import trt_build
    except ImportError as exc:
        raise ValueError(f"the TensorRT engine build is not available in this version ({exc}); use --onnx-only") from None
    progress("building TensorRT engines")
    return trt_build.build_engines(
        stage, trt_files, specs,
        precision=plan.precision, frames=plan.frame_range[1], max_seq_len=plan.max_seq_len, progress=progress,
        opt_frames=plan.frames,
    )


def _tensorrt_files(stage: Path, specs: dict, plan: ExportPlan, progress: Progress) -> dict:
    """Stripped ``*.trt.onnx`` copies (same external data), their lint, and the engines."""
    from slowfast_trt.export.strip_functions import strip_file
    from slowfast_trt.export.trt_lint import lint_model

    trt_files, lint = {}, {}
    for name, spec in specs.items():
        if not str(spec.file).endswith(".onnx"):
            continue  # e.g. the embedding table (.npy), read by the runtime itself
        stripped = strip_file(stage / _relative(stage, spec.file))
        trt_files[name] = _relative(stage, stripped)
        lint[name] = lint_model(stripped, profile_dims=[dim[0] for dim in getattr(spec, "dims", ())])
        for problem in lint[name]:
            progress(f"warning: TensorRT lint: {trt_files[name]}: {problem}")
    engines = _build_engines(stage, specs, trt_files, plan, progress) if plan.build_engines else None
    return {"trt_files": trt_files, "trt_lint": lint, "engines": engines}


def _config_entry(config) -> dict:
    entry = asdict(config)
    entry["derived"] = {
        "head_dim": config.text.head_dim,
        "kv_groups": config.text.kv_groups,
        "hybrid_layers": list(config.cross_attn.hybrid_layers),
        "text_rows_only": config.cross_attn.text_rows_only,
    }
    return entry


def _layouts(config, plan: ExportPlan) -> dict:
    from slowfast_trt.models.qwen2.layers import KV_CACHE_LAYOUT
    from slowfast_trt.models.slowfast.decoder import SLOW_KV_LAYOUT

    text, dtype = config.text, graph_dtype(plan)
    return {
        "kv_cache": {
            "layout": KV_CACHE_LAYOUT, "per_layer": text.num_layers, "dtype": dtype,
            "shape": ["batch", plan.max_seq_len, text.num_kv_heads, text.head_dim],
        },
        "slow_kv": {
            "layout": SLOW_KV_LAYOUT, "hybrid_layers": list(config.cross_attn.hybrid_layers), "dtype": dtype,
            "shape": ["batch", text.num_kv_heads, plan.visual_tokens.get("max_slow") or plan.visual_tokens["slow"],
                      text.head_dim],
        },
    }


def build_manifest(
    plan: ExportPlan, config, specs: dict, ckpt_hash: str, vocab_rows: int, copied: list[str], trt: dict
) -> dict:
    """The manifest.json content (keys: :mod:`slowfast_trt.export.manifest`)."""
    from slowfast_trt._version import __version__
    from slowfast_trt.ops.cross_attention.contract import op_schema
    from slowfast_trt.export.manifest import FORMAT, HASH_METHOD, subgraph_entry
    from slowfast_trt.models.slowfast.family import SLOWFAST

    schema = op_schema()
    subgraphs = {name: subgraph_entry(spec) for name, spec in specs.items()}
    for name, file in trt.get("trt_files", {}).items():
        subgraphs[name]["trt_file"] = file
    return {
        "format": FORMAT,
        "package_version": __version__,
        "family": SLOWFAST.name,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"checkpoint": plan.ckpt, "resolved": str(plan.directory), "hash": ckpt_hash, "hash_method": HASH_METHOD},
        "config": _config_entry(config),
        "precision": plan.precision,
        "dtype": graph_dtype(plan),
        "frames": plan.frames,
        "max_frames": plan.frame_range[1],
        "frame_range": list(plan.frame_range),
        "max_seq_len": plan.max_seq_len,
        "vocab_rows": vocab_rows,
        "visual_tokens": plan.visual_tokens,
        "subgraphs": subgraphs,
        "custom_op": {"name": schema["name"], "domain": schema["domain"], "op_version": schema["op_version"]},
        "layouts": _layouts(config, plan),
        "backend": plan.backend,
        "engines": trt.get("engines"),
        "trt_lint": trt.get("trt_lint"),
        "checkpoint_files": copied,
    }


def _export_int4(plan: ExportPlan, stage: Path, dtype: str, progress: Progress):
    """AWQ scales need the whole model in float32 (calibration runs through it)."""
    from slowfast_trt.models.slowfast.checkpoint import load_model
    from slowfast_trt.tokenizer import load_tokenizer
    from slowfast_trt.export.int4_export import export_int4_awq

    tokenizer = load_tokenizer(plan.directory)
    progress(f"loading the checkpoint in float32 for AWQ calibration (vocab rows {len(tokenizer)})")
    model = load_model(plan.directory, dtype="float32", vocab_rows=len(tokenizer))
    specs = export_int4_awq(model, stage, plan.frame_range[1], plan.max_seq_len, tokenizer=tokenizer,
                            activation_precision=dtype, progress=progress)
    return specs, model.config


def run_export(plan: ExportPlan, progress: Progress = lambda message: None) -> dict:
    """Export into a temporary sibling of ``plan.out`` and rename it into place; returns the manifest."""
    from slowfast_trt.models.slowfast.checkpoint import open_model
    from slowfast_trt.tokenizer import load_tokenizer
    from slowfast_trt.export.manifest import checkpoint_fingerprint, folder_files, write_manifest

    try:
        from slowfast_trt.export.subgraphs import export_all
    except ImportError as exc:
        raise ValueError(f"the ONNX exporter is not available ({exc})") from None
    progress(f"fingerprinting {plan.directory}")
    ckpt_hash = checkpoint_fingerprint(plan.directory)
    vocab_rows = len(load_tokenizer(plan.directory))
    stage = make_stage(plan.out)
    try:
        dtype = graph_dtype(plan)
        if plan.precision == "int4-awq":
            specs, config = _export_int4(plan, stage, dtype, progress)
        else:
            # Names and shapes only: each subgraph's weights are read from the checkpoint while it
            # is exported, and freed after it (memory: the trace and a few blocks, not the model).
            progress(f"opening the checkpoint as {dtype} (vocab rows {vocab_rows})")
            model = open_model(plan.directory, dtype=dtype, vocab_rows=vocab_rows)
            config = model.config
            low, high = plan.frame_range
            progress(f"exporting ONNX subgraphs ({low}..{high} frames, max_seq_len {plan.max_seq_len})")
            specs = export_all(model, stage, dtype, high, plan.max_seq_len, progress=progress)
            del model
        gc.collect()
        copied = copy_checkpoint_files(plan.directory, stage)
        trt = _tensorrt_files(stage, specs, plan, progress) if plan.backend == "tensorrt" else {}
        manifest = build_manifest(plan, config, specs, ckpt_hash, vocab_rows, copied, trt)
        manifest["files"] = folder_files(stage)
        write_manifest(stage, manifest)
        commit_stage(stage, plan.out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    progress(f"done: {plan.out}")
    return manifest
