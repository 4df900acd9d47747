"""``python -m slowfast_trt.export``: a checkpoint -> an export folder (ONNX graphs, manifest, engines).

    python -m slowfast_trt.export --ckpt CKPT --out DIR [--backend tensorrt|onnxruntime]
        [--precision fp32|fp16|bf16|int4-awq] [--max-frames N] [--frames N] [--max-seq-len L] [--onnx-only] [--force]

What each option does and what the folder holds: :mod:`slowfast_trt.export.pipeline`. Progress goes to
stderr; bad input ends with one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from slowfast_trt import dtypes
from slowfast_trt.cli.errors import run_cli
from slowfast_trt.export.pipeline import BACKENDS, DEFAULT_MAX_SEQ_LEN, ExportRequest, Progress, export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m slowfast_trt.export",
        description="Export a Slow-Fast checkpoint to ONNX subgraphs (and TensorRT engines) with a manifest.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory or Hugging Face repo id")
    p.add_argument("--out", required=True, help="export folder to create")
    p.add_argument("--backend", choices=BACKENDS, default="tensorrt",
                   help="tensorrt (default): ONNX, then engines; onnxruntime: ONNX only")
    p.add_argument("--precision", choices=tuple(dtypes.PRECISIONS), default="fp16",
                   help="weight and activation precision (default fp16; bf16 needs --backend tensorrt)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="the graphs serve every video of 1..N frames (default: the checkpoint's training frames)")
    p.add_argument("--frames", type=int, default=None,
                   help="default frames sampled from a video file (default: the training frames, at most --max-frames)")
    p.add_argument("--max-seq-len", type=int, default=None, help=f"KV-cache length (default {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--onnx-only", action="store_true", help="with --backend tensorrt: stop after ONNX, build no engines")
    p.add_argument("--force", action="store_true",
                   help="replace a previous export in --out (it survives a failed export)")
    p.add_argument("--siglip", default=None, help="LongVU: SigLIP tower folder (default: its hub id, from the HF cache)")
    p.add_argument("--dino", default=None, help="LongVU: DINOv2 tower folder (default: its hub id, from the HF cache)")
    return p


def _export_other_family(args, family) -> None:
    """A checkpoint of another family than Slow-Fast: its own export pipeline (LongVU)."""
    from slowfast_trt.export.longvu_pipeline import LongVUExportRequest, export_longvu_checkpoint

    if family.name != "longvu":
        raise ValueError(f"--ckpt {args.ckpt}: no exporter for model family {family.name!r}")
    if args.frames is not None:
        raise ValueError("--frames: LongVU samples one frame per second; its graphs take any number of frames")
    request = LongVUExportRequest(ckpt=args.ckpt, out=args.out, backend=args.backend, precision=args.precision,
                                  max_seq_len=args.max_seq_len, siglip=args.siglip, dino=args.dino,
                                  onnx_only=args.onnx_only, force=args.force)
    plan, manifest = export_longvu_checkpoint(request, stderr_progress())
    print(f"exported {', '.join(manifest['subgraphs'])} ({plan.precision}, max_seq_len {plan.max_seq_len}, "
          f"backend {plan.request.backend}) to {plan.out}")


def stderr_progress() -> Progress:
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[export {time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        from slowfast_trt.runtime.families import family_of_source

        family = family_of_source(args.ckpt)
        if family is not None and family.name != "slowfast":
            return _export_other_family(args, family)
        if args.siglip or args.dino:
            raise ValueError("--siglip/--dino: only for LongVU checkpoints")
        request = ExportRequest(ckpt=args.ckpt, out=args.out, backend=args.backend, precision=args.precision,
                                frames=args.frames, max_seq_len=args.max_seq_len, onnx_only=args.onnx_only,
                                force=args.force, max_frames=args.max_frames)
        plan, manifest = export_checkpoint(request, stderr_progress())
        print(
            f"exported {', '.join(manifest['subgraphs'])} ({plan.precision}, 1..{plan.frame_range[1]} frames, "
            f"default {plan.frames}, "
            f"max_seq_len {plan.max_seq_len}, backend {plan.backend}) to {plan.out}"
        )

    return run_cli(body)
