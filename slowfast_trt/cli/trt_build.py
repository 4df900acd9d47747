"""``slowfast-trt-build DIR``: build the TensorRT engines of an export folder on this device."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slowfast_trt.cli.errors import run_cli
from slowfast_trt.export import trt_plan as P
from slowfast_trt.export.trt_build import build_engines


def main(argv: list[str] | None = None) -> int:
    """Build the engines of an existing export folder in place (manifest updated)."""
    p = argparse.ArgumentParser(prog="slowfast-trt-build", description=main.__doc__)
    p.add_argument("dir", help="export folder (manifest.json, *.onnx)")
    p.add_argument("--vision-batch", type=int, default=None, help="most frames per vision call (default all)")
    p.add_argument("--max-prefill-rows", type=int, default=None, help="most rows per prefill call (default max_seq_len)")
    p.add_argument("--no-nocross", action="store_true", help="no decoder_nocross engine (one decoder weight copy)")
    p.add_argument("--workspace-gib", type=float, default=None, help="TensorRT workspace limit")
    args = p.parse_args(argv)
    return run_cli(lambda: _build(args))


def _build(args) -> None:
    found = P.folder_inputs(args.dir)
    workspace = int(args.workspace_gib * (1 << 30)) if args.workspace_gib else None
    engines = build_engines(Path(args.dir), found["trt_files"], found["specs"], precision=found["precision"],
                            frames=found["frames"], max_seq_len=found["max_seq_len"], progress=print,
                            vision_batch=args.vision_batch, max_prefill_rows=args.max_prefill_rows,
                            include_nocross=not args.no_nocross, workspace_bytes=workspace,
                            opt_frames=found["opt_frames"])
    P.record_engines(args.dir, found["manifest"], engines)


if __name__ == "__main__":
    sys.exit(main())
