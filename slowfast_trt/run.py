"""``python -m slowfast_trt.run``: ask a question about a video.

    python -m slowfast_trt.run --ckpt CKPT --video FILE --question TEXT [--frames N]
        [--max-new-tokens K] [--temperature T] [--dtype float32|float16|bfloat16]
        [--decode-mode upstream|attend] [--json OUT]
    python -m slowfast_trt.run --demo      # built-in tiny checkpoint and sample video

Bad input ends with one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.run", description=__doc__.split("\n")[0])
    src = p.add_argument_group("model and input")
    src.add_argument("--ckpt", help="checkpoint directory or Hugging Face repo id")
    src.add_argument("--video", help="video file (or an image: .png/.jpg)")
    src.add_argument("--question", help="question to ask")
    src.add_argument("--demo", action="store_true", help="use the built-in tiny checkpoint and sample video")
    src.add_argument("--frames", type=int, default=None, help="frames to sample (default: the checkpoint's training frames)")
    src.add_argument("--sampling", choices=("uniform", "fps"), default="uniform", help="frame sampling (default: upstream uniform)")
    src.add_argument("--fps", type=float, default=None, help="frames per second for --sampling fps")
    src.add_argument("--start", type=float, default=None, help="start of the time range in seconds")
    src.add_argument("--end", type=float, default=None, help="end of the time range in seconds")
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--decode-mode", choices=("upstream", "attend"), default="upstream")
    gen.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    gen.add_argument("--device", default="cpu", help="torch device for the reference backend")
    p.add_argument("--json", dest="json_out", help="write the result as JSON to this file")
    return p


def _resolve_inputs(args) -> tuple[str, str, str]:
    if args.demo:
        from .demo_assets import DEMO_QUESTION, ensure_demo_assets

        ckpt, video = ensure_demo_assets()
        return str(args.ckpt or ckpt), str(args.video or video), args.question or DEMO_QUESTION
    missing = [flag for flag, value in (("--ckpt", args.ckpt), ("--video", args.video), ("--question", args.question)) if value is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --demo)")
    return args.ckpt, args.video, args.question


def default_frames(ckpt_config_path: Path) -> int:
    raw = json.loads(ckpt_config_path.read_text())
    return int(raw.get("mm_training_video_frames") or 64)


def run(args) -> dict:
    from .checkpoint import resolve_checkpoint
    from .reference import ReferenceGenerator
    from .sampling import SamplingParams
    from .video import load_image, load_video

    ckpt, video_path, question = _resolve_inputs(args)
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
        stop_strings=tuple(args.stop),
    )
    directory = resolve_checkpoint(ckpt)
    frames = args.frames if args.frames is not None else default_frames(directory / "config.json")
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    start = time.perf_counter()
    generator = ReferenceGenerator.load(directory, dtype=args.dtype, decode_mode=args.decode_mode, device=args.device)
    load_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    if Path(video_path).suffix.lower() in IMAGE_SUFFIXES:
        clip = load_image(video_path)
    else:
        clip = load_video(video_path, frames, sampling=args.sampling, fps=args.fps, start_s=args.start, end_s=args.end)
    decode_ms = (time.perf_counter() - start) * 1e3
    encoded = generator.encode_video(clip)
    encoded.timings_ms["decode_ms"] = decode_ms
    result = generator.generate(question, encoded, sampling)
    out = result.to_json()
    out["timings_ms"]["load_ms"] = round(load_ms, 3)
    out.update({"backend": "torch", "decode_mode": args.decode_mode, "dtype": args.dtype, "question": question})
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out["text"])
    t = out["timings_ms"]
    print(
        f"[{out['frames']} frames, {out['slow_tokens']} slow / {out['fast_tokens']} fast tokens, "
        f"{len(out['token_ids'])} new tokens, ttft {t.get('ttft_ms', 0):.1f} ms, "
        f"decode {t.get('decode_ms_per_token', 0):.2f} ms/token]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
