"""``python -m slowfast_trt.export``: a checkpoint -> an export folder (ONNX graphs, manifest, engines).

    python -m slowfast_trt.export --ckpt CKPT --out DIR [--backend tensorrt|onnxruntime]
        [--precision fp32|fp16|bf16|int4-awq] [--frames N] [--max-seq-len L] [--onnx-only] [--force]

``bf16`` exports float32 graphs that TensorRT builds with its BF16 flag (ONNX opset 17 has no
bf16 convolutions and ONNX Runtime no bf16 CPU kernels), so it needs ``--backend tensorrt``.
``int4-awq`` exports a decoder with 4-bit weights (group 128, AWQ scales from built-in
calibration prompts; :mod:`slowfast_trt.export.quantize_int4`), activations in float16 for
TensorRT and float32 for ONNX Runtime; it loads the whole model (no part-by-part streaming).

The folder gets the ONNX subgraphs (``export_all``), the tokenizer files and ``config.json``
of the checkpoint, and ``manifest.json`` (:mod:`slowfast_trt.export.manifest`). With
``--backend tensorrt`` it also gets ``*.trt.onnx`` copies without the custom op's local
function (what TensorRT parses), their lint results, and, unless ``--onnx-only``, engines.

Everything is written into a temporary sibling folder (``.DIR.partial-*``) that is renamed to
``DIR`` at the end: a failed export leaves nothing behind (a process killed with SIGKILL
leaves its hidden partial folder), and with ``--force`` the old export survives a failed one.
A non-empty ``DIR`` is refused without ``--force``, and ``--force`` only replaces a folder
holding a ``manifest.json`` (a previous export). Progress goes to stderr; bad input ends
with one ``error: ...`` line on stderr and exit status 2.
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
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the checkpoint's training frames)")
    p.add_argument("--max-seq-len", type=int, default=None, help=f"KV-cache length (default {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--onnx-only", action="store_true", help="with --backend tensorrt: stop after ONNX, build no engines")
    p.add_argument("--force", action="store_true",
                   help="replace a previous export in --out (it survives a failed export)")
    return p


def stderr_progress() -> Progress:
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[export {time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        request = ExportRequest(ckpt=args.ckpt, out=args.out, backend=args.backend, precision=args.precision,
                                frames=args.frames, max_seq_len=args.max_seq_len, onnx_only=args.onnx_only,
                                force=args.force)
        plan, manifest = export_checkpoint(request, stderr_progress())
        print(
            f"exported {', '.join(manifest['subgraphs'])} ({plan.precision}, {plan.frames} frames, "
            f"max_seq_len {plan.max_seq_len}, backend {plan.backend}) to {plan.out}"
        )

    return run_cli(body)
