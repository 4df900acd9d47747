"""``bench --stream``: a live window against re-encoding the same frames as a clip, side by side.

    python -m slowfast_trt.bench --stream (--engines DIR | --ckpt CKPT) --video FILE --frames 32 [--runs R]

For each window size N (``--frames``): N frames of the video are pushed one at a time into a
``recent`` window of N (``StreamSession.push``), timing each frame's encode: preprocess
(resize + crop), vision, projector (with the per-frame 2D pooling) and the slow K/V rows
appended; the highest camera rate the encoder sustains is 1000 / (mean encode ms per frame).
Then, R times: one more frame arrives (so the window changed and nothing of the last answer is
reused) and a question is asked on the live window: its time to first token is the window
gather + fast pooling + prefill + first sample (``ask_ttft_ms``). Against it, the same N frames
held are answered as a clip with ``generate``: decode is skipped (frames in memory), so its time
to first token is preprocess + vision + projector + fast pooling + slow K/V + prefill + first
sample. The ratio clip / live is printed; the floor of a live question is its prefill (the
fast tokens and the prompt), that of the clip the vision tower over N frames on top of it.
"""

from __future__ import annotations

import statistics
import sys

QUESTION = "What is happening in this video?"
ENCODE_STAGES = ("preprocess_ms", "vision_ms", "projector_ms", "slow_kv_ms")
CLIP_STAGES = ("preprocess_ms", "vision_ms", "projector_ms", "fast_pool_ms", "slow_kv_ms", "ttft_ms")


def measure_window(rt, frames, window: int, runs: int, new_tokens: int = 2) -> dict:
    """One window size: per-frame encode, live-question TTFT and clip TTFT (medians of ``runs``)."""
    exact = dict(max_new_tokens=new_tokens)
    with rt.open_stream(window=window, policy="recent") as stream:
        per_frame = []
        for i in range(window):
            stream.push(frames[i], timestamp=i / 8)
            per_frame.append(dict(stream.last_encode_ms))
        stream.ask(QUESTION, **exact)  # warm-up: first gather, first prefill at this size
        live, clip, window_ms, prefill = [], [], [], []
        for run in range(runs):
            stream.push(frames[window + run], timestamp=(window + run) / 8)
            stream.reset()
            result = stream.ask(QUESTION, **exact)
            live.append(result.timings_ms["ask_ttft_ms"])
            window_ms.append(result.timings_ms["window_ms"])
            prefill.append(result.timings_ms["prefill_ms"])
            held = [h.index for h in stream.frames_held()]
            whole = rt.generate(frames[held], QUESTION, **exact)
            clip.append(sum(whole.timings_ms.get(k, 0.0) for k in CLIP_STAGES))
    encode = {k: statistics.median(f.get(k, 0.0) for f in per_frame[1:] or per_frame) for k in ENCODE_STAGES}
    total = sum(encode.values())
    row = {"window": window, "frames_pushed": window + runs,
           "encode_ms": {k.replace("_ms", ""): v for k, v in encode.items()}, "encode_ms_per_frame": total,
           "max_camera_fps": 1e3 / total if total else None,
           "live_ttft_ms": statistics.median(live), "live_window_ms": statistics.median(window_ms),
           "live_prefill_ms": statistics.median(prefill), "clip_ttft_ms": statistics.median(clip)}
    row["clip_over_live"] = row["clip_ttft_ms"] / row["live_ttft_ms"]
    return row


def run(args) -> dict:
    """``bench --stream`` (arguments of :mod:`slowfast_trt.tools.bench`)."""
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime
    from slowfast_trt.video import load_video

    if bool(args.ckpt) == bool(args.engines):
        raise ValueError("give exactly one of --ckpt and --engines")
    source = args.ckpt or args.engines
    kwargs = dict(dtype=args.dtype) if args.ckpt else dict(threads=args.threads)
    rt = SlowFastRuntime.load(source, backend=args.backend, device=args.device or ("cpu" if args.ckpt else None),
                              decode_mode=args.decode_mode, vision_batch=args.vision_batch, **kwargs)
    rows = []
    try:
        for window in args.frames:
            frames = load_video(args.video, window + args.runs).frames
            rows.append(measure_window(rt, frames, window, args.runs))
            print(f"[bench --stream] window {window} done", file=sys.stderr, flush=True)
        info = rt.info()
    finally:
        rt.close()
    return {"mode": "stream", "backend": info["backend"], "device": info["device"], "dtype": info["dtype"],
            "runs": args.runs, "threads": args.threads, "video": str(args.video), "results": rows}


def format_report(out: dict) -> str:
    lines = [f"{out['backend']} on {out['device']} ({out['dtype']}), live window vs clip, median of {out['runs']} "
             "runs (times in ms)",
             "  ".join(f"{h:>10}" for h in ("window", "preproc", "vision", "projector", "slow_kv+", "ms/frame",
                                             "max fps", "live ttft", "clip ttft", "clip/live"))]
    for r in out["results"]:
        e = r["encode_ms"]
        cells = (r["window"], e["preprocess"], e["vision"], e["projector"], e["slow_kv"], r["encode_ms_per_frame"],
                 r["max_camera_fps"], r["live_ttft_ms"], r["clip_ttft_ms"], r["clip_over_live"])
        lines.append("  ".join(f"{c:>10.2f}" if isinstance(c, float) else f"{c:>10}" for c in cells))
    for r in out["results"]:
        lines.append(f"window {r['window']}: a question on the live window reaches its first token "
                     f"x{r['clip_over_live']:.1f} sooner than re-encoding the {r['window']} frames as a clip "
                     f"(live = gather + fast pooling {r['live_window_ms']:.1f} + prefill {r['live_prefill_ms']:.1f}; "
                     f"the encoder sustains {r['max_camera_fps']:.1f} frames/s)")
    return "\n".join(lines)
