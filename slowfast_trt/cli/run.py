"""``python -m slowfast_trt.run``: ask a question about a video.

    python -m slowfast_trt.run (--engines DIR | --ckpt CKPT) --video FILE --question TEXT
        [--frames N] [--max-new-tokens K] [--temperature T] [--dtype float32|float16|bfloat16]
        [--decode-mode upstream|attend] [--backend auto|tensorrt|onnxruntime|torch]
        [--stream] [--json OUT]
    python -m slowfast_trt.run --engines DIR --video FILE --interactive   # questions from stdin
    python -m slowfast_trt.run --engines DIR --video SOURCE --live [--window N] [--policy recent|uniform]
        [--sample-fps F] [--question Q --ask-every S]   # a live source (see slowfast_trt.cli.live)
    python -m slowfast_trt.run --demo      # export the built-in tiny checkpoint, run it on a sample video

``--engines`` runs an export folder (TensorRT when it has engines and TensorRT is present,
else ONNX Runtime); ``--ckpt`` runs the checkpoint eagerly in PyTorch (the reference).
``--interactive`` encodes the video once and answers one question per stdin line as
follow-ups in one conversation (``/reset`` starts a new conversation about the same video);
each line is answered as soon as it is read (a pipe works: write a line, read the answer).
``--json`` is checked before any work; the answer is printed even when writing it fails.
Bad input ends with one ``error: ...`` line on stderr and exit status 2; in interactive mode
a bad question prints that line and the session goes on (the exit status is then 2).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from slowfast_trt.cli import live
from slowfast_trt.cli.checks import as_flags, check_destination, check_options, write_json
from slowfast_trt.cli.errors import attempt, print_out, run_cli
from slowfast_trt.models.slowfast.config import SlowFastConfig



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.run", description=__doc__.split("\n")[0])
    src = p.add_argument_group("model and input")
    src.add_argument("--ckpt", help="checkpoint directory or Hugging Face repo id (PyTorch backend)")
    src.add_argument("--engines", help="export folder from python -m slowfast_trt.export")
    src.add_argument("--video", help="video file (or an image: .png/.jpg)")
    src.add_argument("--question", help="question to ask")
    src.add_argument("--demo", action="store_true", help="use the built-in tiny checkpoint and sample video")
    src.add_argument("--siglip", default=None,
                     help="LongVU --ckpt: SigLIP tower folder (default: google/siglip-so400m-patch14-384 from the HF cache)")
    src.add_argument("--dino", default=None,
                     help="LongVU --ckpt: DINOv2 tower folder (default: facebook/dinov2-giant from the HF cache)")
    src.add_argument("--frames", type=int, default=None,
                     help="frames to sample (default: the export's frame count, or the checkpoint's training frames)")
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
    gen.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="--ckpt only")
    gen.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto")
    gen.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu for --ckpt, the best available for --engines)")
    gen.add_argument("--threads", type=int, default=None, help="intra-op threads (ONNX Runtime, and torch for --ckpt)")
    gen.add_argument("--vision-batch", type=int, default=None, help="frames per vision call (default: all at once)")
    gen.add_argument("--decode-steps", choices=("auto", "dynamic", "static", "cuda-graph"), default="auto",
                     help="how decode steps run (auto: CUDA graphs for TensorRT and torch on CUDA)")
    out = p.add_argument_group("output")
    out.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    out.add_argument("--interactive", action="store_true", help="read questions from stdin, one per line, as follow-ups")
    out.add_argument("--json", dest="json_out", help="write the result (a list in interactive mode) as JSON to this file")
    live.add_arguments(p)
    return p


def _resolve_inputs(args) -> tuple[str, str | None, str | None]:
    """(model source, video, question); the question may come from stdin in interactive mode."""
    if args.demo:
        from slowfast_trt.cli.demo import DEMO_QUESTION, demo_paths

        # The main job end to end: the built-in checkpoint's export (made, or rebuilt when
        # damaged, by _load), then the engines.
        paths = demo_paths()
        source = args.engines or args.ckpt or str(paths["export"])
        return str(source), str(args.video or paths["video"]), args.question or (None if args.interactive else DEMO_QUESTION)
    if args.ckpt and args.engines:
        raise ValueError("give either --ckpt or --engines, not both")
    required = [("--ckpt or --engines", args.ckpt or args.engines), ("--video", args.video)]
    if not args.interactive:
        required.append(("--question", args.question))
    missing = [flag for flag, value in required if value is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --demo)")
    return args.ckpt or args.engines, args.video, args.question


def default_frames(ckpt_config_path: Path) -> int:
    return SlowFastConfig.from_file(ckpt_config_path).training_frames


def _sampling(args) -> dict:
    from slowfast_trt.sampling import SamplingParams

    params = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
        stop_strings=tuple(args.stop),
    )
    try:
        SamplingParams(**params)  # bad values fail before anything is loaded
    except ValueError as exc:
        raise as_flags(exc) from None
    return params


def _load(args, source: str):
    """The runtime of ``source``; for the demo, its cache made (or rebuilt) first."""
    if args.demo and not (args.engines or args.ckpt):
        from slowfast_trt.cli.demo import open_demo

        return open_demo(lambda folder: load_runtime(args, str(folder)), progress=lambda m: print(m, file=sys.stderr))
    return load_runtime(args, source)


def load_runtime(args, source: str):
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    check_options(args)
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    is_export = bool(args.engines) or (Path(source) / "manifest.json").is_file()
    if args.engines:
        from slowfast_trt.export.manifest import load_manifest

        if not Path(source).is_dir():
            raise ValueError(f"--engines {source}: export folder not found")
        load_manifest(source)  # a folder without manifest.json: one line on how to make one
    if is_export:
        dtype = args.dtype if args.dtype != "float32" else None  # the default: whatever the export has
        return SlowFastRuntime.load(source, backend=args.backend, device=args.device, decode_mode=args.decode_mode,
                                    threads=args.threads, dtype=dtype, vision_batch=args.vision_batch,
                                    decode_steps=args.decode_steps)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    # Family options (LongVU's tower folders) only when given: Slow-Fast takes none.
    towers = {k: v for k, v in (("siglip", getattr(args, "siglip", None)), ("dino", getattr(args, "dino", None))) if v}
    return SlowFastRuntime.load(source, backend=args.backend, device=args.device or "cpu",
                                decode_mode=args.decode_mode, dtype=args.dtype, vision_batch=args.vision_batch,
                                decode_steps=args.decode_steps, **towers)


def _open(runtime, args, video: str | None):
    # An image (by suffix) is read as one frame; the sampling options only apply to videos.
    return runtime.open_video(video, frames=args.frames, sampling=args.sampling, fps=args.fps,
                              start_s=args.start, end_s=args.end)


def _answer(session, question: str, sampling: dict, stream: bool) -> dict:
    with warnings.catch_warnings():
        # The CLI prints the result's history note itself (see interactive), every time.
        warnings.filterwarnings("ignore", message="this turn is not kept", category=RuntimeWarning)
        if stream:
            pieces = session.stream(question, **sampling)
            for piece in pieces:
                print_out(piece, end="")
            print_out()
            result = pieces.result
        else:
            result = session.ask(question, **sampling)
    out = result.to_json()
    out["question"] = question
    return out


def run(args) -> dict:
    """One question (non-interactive); returns the JSON-able result."""
    source, video, question = _resolve_inputs(args)
    sampling = _sampling(args)
    if args.demo:
        from slowfast_trt.cli.demo import describe

        describe(question, video, custom_video=bool(args.video))
    start = time.perf_counter()
    runtime = _load(args, source)
    load_ms = (time.perf_counter() - start) * 1e3
    with _open(runtime, args, video) as session:
        out = _answer(session, question, sampling, args.stream)
    out["timings_ms"]["load_ms"] = round(load_ms, 3)
    info = runtime.info()
    out.update({"backend": info["backend"], "decode_mode": args.decode_mode, "dtype": info["dtype"]})
    return out


def _stats_line(out: dict) -> str:
    t = out["timings_ms"]
    return (
        f"[{out['frames']} frames, {out['slow_tokens']} slow / {out['fast_tokens']} fast tokens, "
        f"{len(out['token_ids'])} new tokens, ttft {t.get('ttft_ms', 0):.1f} ms, "
        f"decode {t.get('decode_ms_per_token', 0):.2f} ms/token]"
    )


def interactive(args, stdin=None) -> int:
    """Questions from stdin, one per line, as follow-ups about one video; returns the exit status."""
    stdin = stdin or sys.stdin
    source, video, question = _resolve_inputs(args)
    sampling = _sampling(args)
    runtime = _load(args, source)
    results, status = [], 0
    with _open(runtime, args, video) as session:
        print(f"[{runtime.backend} on {runtime.device}; one question per line, /reset for a new conversation, "
              "end with Ctrl-D]", file=sys.stderr, flush=True)
        for line in _questions(question, stdin):
            if not line.strip():
                continue
            if line.strip() == "/reset":
                session.reset()
                continue
            ok, out = attempt(lambda: _answer(session, line, sampling, args.stream))
            if not ok:  # this question only (its one error line is printed): the session stays usable
                status = 2
                continue
            if not args.stream:
                print_out(out["text"])
            print(_stats_line(out), file=sys.stderr, flush=True)
            if out.get("history_note"):
                print(f"note: {out['history_note']}", file=sys.stderr, flush=True)
            results.append(out)
    if args.json_out:
        write_json(args.json_out, results, printed="every answer")
    return status


def _questions(first: str | None, stdin):
    """``first`` (``--question``), then stdin's lines, each as soon as it is read (``readline``,
    not the whole input first: a program writing into a pipe gets each answer before the next);
    ``stdin`` may also be any iterable of lines."""
    if first:
        yield first
    for line in iter(stdin.readline, "") if hasattr(stdin, "readline") else stdin:
        yield line.rstrip("\n")


def run_live(args, stdin=None) -> int:
    """``--live``: questions about a live source while it plays (:mod:`slowfast_trt.cli.live`)."""
    live.check_arguments(args)
    source = args.ckpt or args.engines
    if args.demo or not source or not args.video:
        raise ValueError("--live needs --engines DIR (or --ckpt) and --video SOURCE (a file, URL or /dev/video0)")
    sampling = _sampling(args)
    return live.run_live(args, load_runtime(args, source), sampling, stdin)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.live:
            return run_live(args)
        check_destination(args.json_out)  # before any work: a bad path is found now, not after the answer
        if args.interactive:
            return interactive(args)
        out = run(args)
        failed = None
        if args.json_out:  # first: the file is written even when stdout is a closed pipe
            try:
                write_json(args.json_out, out)
            except OSError as exc:
                failed = exc
        if not args.stream:
            print_out(out["text"])
        print(_stats_line(out), file=sys.stderr, flush=True)
        if args.demo:
            from slowfast_trt.cli.demo import next_steps

            next_steps()
        if failed is not None:
            raise failed
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
