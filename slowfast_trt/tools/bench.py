"""``python -m slowfast_trt.bench``: per-stage timings and memory for several frame counts.

    python -m slowfast_trt.bench (--engines DIR | --ckpt CKPT) --video FILE --frames N [N ...]
        [--new-tokens K] [--runs R] [--warmup W] [--decode-mode upstream|attend]
        [--decode-steps auto|dynamic|static|cuda-graph ...] [--json OUT]
    python -m slowfast_trt.bench --stream ... --frames N   # a live window of N vs the same N frames as a clip
                                                          # (slowfast_trt.tools.bench_stream)

For each frame count: decode and preprocess the video, run the vision tower, pooler and
slow K/V projection once, prefill, decode exactly ``K`` tokens, ask a follow-up in the same
session, and then decode again in the upstream style, which recomputes the slow K/V
projection (layer norm + kv_proj of every slow token for every hybrid layer) before every
decode step. Each number is the median of ``R`` runs after ``W`` warm-up runs.

``--decode-steps`` takes several modes (:mod:`slowfast_trt.runtime.decode_graph`), e.g.
``dynamic cuda-graph``: every frame count is measured with each, in one run, and the decode
ms/token ratio of each mode to the first is printed (the CUDA-graph gain, side by side).

On a Jetson (``tegrastats`` on PATH) the measured runs of each frame count are also sampled
every 100 ms: mean module power (``VDD_IN``, or AGX Orin's three input rails) in W, mean GR3D
(GPU) load in %, and peak RAM in MB (the whole board's, CPU and GPU share it). Elsewhere these
columns are None (``-`` in the table).

One export folder serves every frame count from 1 to its ``max_frames``, so ``--frames 16 64``
runs on one export; ``--engines`` may also name a folder of export folders (the first that
serves a count runs it).
The table goes to stdout, ``--json`` writes the same numbers. Bad input ends with one
``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

from slowfast_trt.cli.errors import run_cli

QUESTION = "What is happening in this video?"
FOLLOWUP = "What happens next?"
FIELDS = (
    "frames", "decode_steps", "slow_tokens", "fast_tokens", "video_decode_ms", "preprocess_ms", "vision_ms", "pooler_ms",
    "slow_kv_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token", "decode_tokens_per_s", "followup_ttft_ms",
    "baseline_decode_ms_per_token", "baseline_ratio", "peak_host_mb", "peak_device_mb", "device_used_mb",
    "power_w_mean", "gpu_load_mean", "ram_mb_peak",
)
TEGRA_INTERVAL_MS = 100


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.bench", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="checkpoint (PyTorch backend)")
    p.add_argument("--engines", help="export folder, or a folder of export folders (one per frame count)")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--frames", type=int, nargs="+", required=True, help="frame counts to measure")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens to decode per run (default 64)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per frame count (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--decode-mode", choices=("upstream", "attend"), default="upstream")
    p.add_argument("--decode-steps", nargs="+", default=["auto"], choices=("auto", "dynamic", "static", "cuda-graph"),
                   help="how decode steps run; several are measured side by side (default auto)")
    p.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="--ckpt only")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (ONNX Runtime, and torch for --ckpt)")
    p.add_argument("--vision-batch", type=int, default=None, help="frames per vision call (default: all at once)")
    p.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    p.add_argument("--stream", action="store_true",
                   help="live window vs clip: per-frame encode ms, camera rate, question TTFT (--frames: window sizes)")
    return p


# -- memory ----------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_host() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_host_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def _reset_peak_device(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_device_mb(device) -> float | None:
    import torch

    # torch's allocator only: KV cache, slow K/V and I/O buffers (ONNX Runtime's or TensorRT's
    # own workspaces are not included).
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _device_used_mb(device) -> float | None:
    """Memory in use on the whole device (the driver's total - free) after the runs: unlike
    the torch peak it includes TensorRT's engines and execution contexts, ONNX Runtime's arena
    and CUDA graphs' pools, and any other process on the GPU."""
    import torch

    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**20


def tegra_fields(samples) -> dict:
    """``power_w_mean``, ``gpu_load_mean``, ``ram_mb_peak`` of parsed tegrastats samples;
    all None when there are none (not a Jetson) or a field is absent from every line."""
    from slowfast_trt.tools.tegrastats import summarize

    summary = summarize(list(samples or ()))
    power = summary["power_mean_mw"]
    return {
        "power_w_mean": power / 1e3 if power is not None else None,
        "gpu_load_mean": summary["gpu_load_mean"],
        "ram_mb_peak": summary["ram_peak_mb"],
    }


# -- runs ------------------------------------------------------------------------------------


def _sources(args) -> dict[int, str]:
    """Frame count -> model source: one checkpoint for all, or the export folder serving that
    count (one export serves 1..its max_frames; a folder of export folders is searched in order)."""
    if bool(args.ckpt) == bool(args.engines):
        raise ValueError("give exactly one of --ckpt and --engines")
    if args.ckpt:
        return {n: args.ckpt for n in args.frames}
    from slowfast_trt.export.manifest import load_manifest

    root = Path(args.engines)
    if not root.is_dir():
        raise ValueError(f"--engines {root}: export folder not found")
    folders = [root] if (root / "manifest.json").is_file() else sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())
    if not folders:
        load_manifest(root)  # raises: not an export folder
    ranges = {}
    for folder in folders:
        manifest = load_manifest(folder)
        ranges[str(folder)] = int(manifest.get("max_frames", manifest["frames"]))
    found, missing = {}, []
    for n in args.frames:
        folder = next((f for f, high in ranges.items() if n <= high), None)
        if folder is None:
            missing.append(n)
        else:
            found[n] = folder
    if missing:
        served = ", ".join(f"1..{high}" for high in sorted(set(ranges.values())))
        raise ValueError(
            f"--engines {root}: no export serves {', '.join(map(str, missing))} frames (exports found for {served}); "
            "re-export with --max-frames N"
        )
    return found


def one_run(rt, video: str, frames: int, new_tokens: int) -> dict:
    """Encode, ask, follow up, then the recompute baseline, all in one session."""
    exact = dict(max_new_tokens=new_tokens)
    with rt.open_video(video, frames=frames) as session:
        session.ignore_stop_tokens = True
        first = session.ask(QUESTION, **exact)
        followup = session.ask(FOLLOWUP, max_new_tokens=2)
        session.reset()
        session.recompute_slow_kv_per_step = True
        baseline = session.ask(QUESTION, **exact)
    t = first.timings_ms
    per_token = t.get("decode_ms_per_token", 0.0)
    return {
        "slow_tokens": first.slow_tokens, "fast_tokens": first.fast_tokens,
        **{key: t.get(key, 0.0) for key in ("video_decode_ms", "preprocess_ms", "vision_ms", "pooler_ms", "slow_kv_ms",
                                             "prefill_ms", "ttft_ms")},
        "decode_ms_per_token": per_token,
        "decode_tokens_per_s": 1e3 / per_token if per_token else 0.0,
        "followup_ttft_ms": followup.timings_ms.get("ttft_ms", 0.0),
        "baseline_decode_ms_per_token": baseline.timings_ms.get("decode_ms_per_token", 0.0),
    }


def measure(rt, video: str, frames: int, new_tokens: int, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        one_run(rt, video, frames, new_tokens)
    reset_ok = reset_peak_host()
    _reset_peak_device(rt.device)
    from slowfast_trt.tools.tegrastats import Tegrastats

    monitor = Tegrastats(interval_ms=TEGRA_INTERVAL_MS) if Tegrastats.available() else None
    with monitor if monitor is not None else contextlib.nullcontext():
        samples = [one_run(rt, video, frames, new_tokens) for _ in range(runs)]
    row = {"frames": frames}
    for key in samples[0]:
        values = [s[key] for s in samples]
        row[key] = values[0] if key.endswith("_tokens") else statistics.median(values)
    row["baseline_ratio"] = row["baseline_decode_ms_per_token"] / row["decode_ms_per_token"] if row["decode_ms_per_token"] else 0.0
    row["peak_host_mb"] = peak_host_mb()
    row["peak_host_reset"] = reset_ok
    row["peak_device_mb"] = _peak_device_mb(rt.device)
    row["device_used_mb"] = _device_used_mb(rt.device)
    row.update(tegra_fields(monitor.samples if monitor is not None else None))
    return row


def flatness(rows: list[dict]) -> dict | None:
    """Decode ms/token at the most frames over the fewest, for ours and the baseline."""
    if len(rows) < 2:
        return None
    lo, hi = min(rows, key=lambda r: r["frames"]), max(rows, key=lambda r: r["frames"])
    return {
        "frames": [lo["frames"], hi["frames"]],
        "ours_ratio": hi["decode_ms_per_token"] / lo["decode_ms_per_token"],
        "baseline_ratio": hi["baseline_decode_ms_per_token"] / lo["baseline_decode_ms_per_token"],
    }


def format_table(rows: list[dict]) -> str:
    head = ("frames", "steps", "slow", "fast", "dec+pre", "vision", "pooler", "slow_kv", "prefill", "ttft", "ms/tok", "tok/s",
            "fup_ttft", "base ms/tok", "base/ours", "host MB", "dev MB", "dev used", "power W", "GPU %", "RAM MB")
    lines = ["  ".join(f"{h:>9}" for h in head)]
    for r in rows:
        cells = (r["frames"], r.get("decode_steps"), r["slow_tokens"], r["fast_tokens"], r["video_decode_ms"] + r["preprocess_ms"], r["vision_ms"],
                 r["pooler_ms"], r["slow_kv_ms"], r["prefill_ms"], r["ttft_ms"], r["decode_ms_per_token"],
                 r["decode_tokens_per_s"], r["followup_ttft_ms"], r["baseline_decode_ms_per_token"], r["baseline_ratio"],
                 r["peak_host_mb"], r["peak_device_mb"], r.get("device_used_mb"), r.get("power_w_mean"), r.get("gpu_load_mean"),
                 r.get("ram_mb_peak"))
        lines.append("  ".join(_cell(c) for c in cells))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return f"{'-':>9}"
    if isinstance(value, float):
        return f"{value:>9.2f}"
    return f"{value:>9}"


def release_runtimes(loaded: dict) -> None:
    """Close every runtime in ``loaded`` and give its memory back (sessions, engines, caches)
    before another export is loaded: two held at once is two copies of the weights."""
    from slowfast_trt.models.slowfast.checkpoint import trim_memory

    while loaded:
        loaded.popitem()[1].close()
    trim_memory()  # gc + malloc_trim


def bench(args, rows: list | None = None) -> dict:
    """Measure every decode-steps mode and frame count; ``rows`` (if given) gets each row as
    it is measured, so a caller still has them when a later one fails."""
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    for name, value, low in (("--new-tokens", args.new_tokens, 2), ("--runs", args.runs, 1), ("--warmup", args.warmup, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if any(n < 1 for n in args.frames):
        raise ValueError(f"--frames must all be >= 1, got {args.frames}")
    if not Path(args.video).is_file():
        raise ValueError(f"{args.video}: no such file")
    sources = _sources(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    rows, info = ([] if rows is None else rows), {}
    for steps in dict.fromkeys(args.decode_steps):
        loaded = {}  # at most one runtime: the previous export is released before the next loads
        for frames in args.frames:
            source = sources[frames]
            if source not in loaded:
                release_runtimes(loaded)
                kwargs = dict(dtype=args.dtype) if args.ckpt else dict(threads=args.threads)
                device = args.device or ("cpu" if args.ckpt else None)
                loaded[source] = SlowFastRuntime.load(source, backend=args.backend, device=device,
                                                      decode_mode=args.decode_mode, vision_batch=args.vision_batch,
                                                      decode_steps=steps, **kwargs)
            rt = loaded[source]
            info = rt.info()
            row = {"frames": frames, "decode_steps": info["decode_steps"]}
            row.update(measure(rt, args.video, frames, args.new_tokens, args.runs, args.warmup))
            rows.append(row)
            print(f"[bench] {frames} frames, decode steps {info['decode_steps']} done", file=sys.stderr, flush=True)
        release_runtimes(loaded)
    first = [r for r in rows if r["decode_steps"] == rows[0]["decode_steps"]]
    return {
        "backend": info.get("backend"), "device": info.get("device"), "dtype": info.get("dtype"),
        "decode_mode": args.decode_mode, "new_tokens": args.new_tokens, "runs": args.runs, "warmup": args.warmup,
        "video": str(args.video), "results": rows, "decode_flatness": flatness(first),
        "decode_steps_ratios": step_ratios(rows),
    }


def step_ratios(rows: list[dict]) -> list[dict]:
    """Decode ms/token of each further decode-steps mode over the first mode's, per frame count."""
    base = {r["frames"]: r for r in rows if r["decode_steps"] == rows[0]["decode_steps"]}
    return [
        {"frames": r["frames"], "decode_steps": r["decode_steps"], "versus": base[r["frames"]]["decode_steps"],
         "ms_per_token_ratio": r["decode_ms_per_token"] / base[r["frames"]]["decode_ms_per_token"]}
        for r in rows
        if r["decode_steps"] != rows[0]["decode_steps"] and base.get(r["frames"], {}).get("decode_ms_per_token")
    ]


def main(argv: list[str] | None = None) -> int:
    from slowfast_trt.tools import bench_longvu

    if bench_longvu.handles(sys.argv[1:] if argv is None else argv):  # a LongVU model: its own stages
        return bench_longvu.main(argv)
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _main(args))


def check_before_work(args) -> None:
    """What can be known to fail before anything is measured: options, the --json file, and
    --decode-steps cuda-graph where no CUDA device or no capturing backend is."""
    import torch

    from slowfast_trt.cli.checks import check_destination, check_options

    check_options(args)
    check_destination(args.json_out)
    if "cuda-graph" in args.decode_steps:
        device = args.device or ("cpu" if args.ckpt else None)
        if not torch.cuda.is_available() or (device is not None and not str(device).startswith("cuda")):
            where = f"--device {device}" if device else "no CUDA device is available"
            raise ValueError(f"--decode-steps cuda-graph needs a CUDA device ({where}); measure dynamic or static here")
        if args.backend == "onnxruntime":
            raise ValueError("--decode-steps cuda-graph needs --backend tensorrt or torch (ONNX Runtime cannot be captured)")


def _main(args) -> int:
    check_before_work(args)
    if args.stream:
        return _main_stream(args)
    start = time.perf_counter()
    rows: list[dict] = []
    try:
        out = bench(args, rows)
    except BaseException:
        _keep_partial(args, rows)  # a later mode or frame count failed (or Ctrl-C): keep what was measured
        raise
    out["wall_s"] = round(time.perf_counter() - start, 3)
    from slowfast_trt.cli.checks import write_then_print

    write_then_print(args.json_out, out, lambda: _print_results(out), printed="the table")
    return 0


def _keep_partial(args, rows: list[dict]) -> None:
    if not rows:
        return
    print(f"[bench] stopped after {len(rows)} measured rows; those measured so far:", file=sys.stderr, flush=True)
    print(format_table(rows), flush=True)
    if args.json_out:
        from slowfast_trt.cli.checks import write_json

        try:
            write_json(args.json_out, {"partial": True, "results": rows}, printed="the table")
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)


def _print_results(out: dict) -> None:
    print(f"{out['backend']} on {out['device']} ({out['dtype']}), decode mode {out['decode_mode']}, "
          f"{out['new_tokens']} new tokens, median of {out['runs']} runs (times in ms)")
    print(format_table(out["results"]))
    flat = out["decode_flatness"]
    if flat:
        print(f"decode ms/token at {flat['frames'][1]} vs {flat['frames'][0]} frames: ours x{flat['ours_ratio']:.2f}, "
              f"upstream-style baseline (slow K/V recomputed every step) x{flat['baseline_ratio']:.2f}")
    for ratio in out["decode_steps_ratios"]:
        print(f"decode ms/token at {ratio['frames']} frames, {ratio['decode_steps']} over {ratio['versus']}: "
              f"x{ratio['ms_per_token_ratio']:.2f}", flush=True)


def _main_stream(args) -> int:
    from slowfast_trt.tools import bench_stream

    if args.runs < 1 or any(n < 2 for n in args.frames):
        raise ValueError(f"--stream needs --runs >= 1 and windows (--frames) >= 2, got {args.runs} and {args.frames}")
    if not Path(args.video).is_file():
        raise ValueError(f"{args.video}: no such file")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = bench_stream.run(args)
    out["wall_s"] = round(time.perf_counter() - start, 3)
    from slowfast_trt.cli.checks import write_then_print

    write_then_print(args.json_out, out, lambda: print(bench_stream.format_report(out), flush=True), printed="the report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
