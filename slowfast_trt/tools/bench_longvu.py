"""LongVU per-stage timings: ``python -m slowfast_trt.bench`` hands LongVU sources here.

    python -m slowfast_trt.bench (--engines DIR | --ckpt CKPT [--siglip DIR --dino DIR]) \\
        (--video FILE | --frames T [T ...]) [--new-tokens K] [--runs R] [--warmup W] [--json OUT]

LongVU samples one frame per second, so a file gives its own frame count; ``--frames T`` measures
T synthetic distinct frames (96 x 96, in memory; no decoding) per count instead. For each video:
open it (pad + resize, DINOv2 on every frame), ask (selection, SigLIP + connector on the kept
frames, merge, prefill, ``K`` tokens), then a follow-up in the same session (selection and merge
again, SigLIP + connector only for newly kept frames, prefill of the rows that differ). Each
number is the median of ``R`` runs; ``dino_share`` is DINOv2's part of the time to the first token
of the first question (the part that grows with the video; see ``tools.longvu_budget``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

QUESTION = "What is happening in this video?"
FOLLOWUP = "What happens next?"
STAGES = ("video_decode_ms", "preprocess_ms", "dino_ms", "select_ms", "siglip_ms", "connector_ms", "merge_ms",
          "prefill_ms")
FIELDS = ("frames", "kept", "mode", "visual_tokens", *STAGES, "ttft_ms", "decode_ms_per_token", "dino_share",
          "followup_ttft_ms", "followup_reused_rows", "followup_prefill_rows")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.bench (LongVU)", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt")
    p.add_argument("--engines")
    p.add_argument("--siglip")
    p.add_argument("--dino")
    p.add_argument("--video")
    p.add_argument("--frames", type=int, nargs="+")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", dest="json_out")
    return p


def _synthetic(frames: int):
    from slowfast_trt.fixtures.longvu_video import make_video

    return make_video(96, 96, [[e, 1] for e in range(frames)], seed=11)


def one_run(rt, video, new_tokens: int) -> dict:
    with rt.open_video(video) as session:
        first = session.ask(QUESTION, max_new_tokens=new_tokens, stop_token_ids=())
        followup = session.ask(FOLLOWUP, max_new_tokens=2)
    t = first.timings_ms
    stages = {key: t.get(key, 0.0) for key in STAGES}
    before_first = sum(stages.values()) or 1.0
    return {"frames": first.frames, "kept": len(first.kept_frames), "mode": first.mode,
            "visual_tokens": first.fast_tokens, **stages, "ttft_ms": t.get("ttft_ms", 0.0),
            "decode_ms_per_token": t.get("decode_ms_per_token", 0.0), "dino_share": stages["dino_ms"] / before_first,
            "followup_ttft_ms": followup.timings_ms.get("ttft_ms", 0.0),
            "followup_reused_rows": followup.reused_rows, "followup_prefill_rows": followup.prefill_rows}


def measure(rt, video, new_tokens: int, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        one_run(rt, video, new_tokens)
    samples = [one_run(rt, video, new_tokens) for _ in range(runs)]
    return {key: (statistics.median(s[key] for s in samples) if isinstance(samples[0][key], float) else samples[0][key])
            for key in samples[0]}


def format_table(rows: list[dict]) -> str:
    head = " ".join(f"{f:>12}" for f in FIELDS)
    cell = lambda v: f"{v:12.3f}" if isinstance(v, float) else f"{v!s:>12}"  # noqa: E731
    return "\n".join([head] + [" ".join(cell(r[f]) for f in FIELDS) for r in rows])


def bench(args) -> dict:
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    if not (args.ckpt or args.engines) or (args.ckpt and args.engines):
        raise ValueError("give one of --ckpt or --engines")
    if (args.video is None) == (args.frames is None):
        raise ValueError("give --video FILE or --frames T [T ...] (synthetic frames)")
    if args.runs < 1 or args.warmup < 0 or args.new_tokens < 1:
        raise ValueError("--runs and --new-tokens must be >= 1, --warmup >= 0")
    towers = {k: v for k, v in (("siglip", args.siglip), ("dino", args.dino)) if v}
    source = args.engines or args.ckpt
    start = time.perf_counter()
    rt = SlowFastRuntime.load(source, device=args.device or ("cpu" if args.ckpt else None), threads=args.threads,
                              **towers)
    load_s = time.perf_counter() - start
    videos = [args.video] if args.video else [_synthetic(t) for t in args.frames]
    try:
        rows = [measure(rt, v, args.new_tokens, args.runs, args.warmup) for v in videos]
    finally:
        rt.close()
    return {"family": "longvu", "source": source, "info": rt.info(), "load_s": load_s, "rows": rows}


def handles(argv: list[str]) -> bool:
    """Whether ``--engines`` / ``--ckpt`` of ``argv`` is a LongVU model (so ``slowfast_trt.bench`` hands it here)."""
    from slowfast_trt.runtime.families import family_of_source

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--engines")
    p.add_argument("--ckpt")
    args, _ = p.parse_known_args(argv)
    family = family_of_source(args.engines or args.ckpt) if (args.engines or args.ckpt) else None
    return family is not None and family.name == "longvu"


def main(argv: list[str] | None = None) -> int:
    from slowfast_trt.cli.errors import run_cli

    args = build_parser().parse_known_args(argv)[0]

    def body() -> int:
        out = bench(args)
        print(format_table(out["rows"]))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
