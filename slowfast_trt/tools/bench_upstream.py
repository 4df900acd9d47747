"""``python -m slowfast_trt.tools.bench_upstream``: ours against upstream, side by side in one run.

    python -m slowfast_trt.tools.bench_upstream --ckpt CKPT [--engines DIR] --video FILE --frames 16 64
        [--new-tokens 32] [--rounds 3] [--threads 1] [--upstream-cmd "PY HARNESS"] [--json OUT]

Systems, each given the same resized and cropped uint8 frames:

* ``torch``: ``SlowFastRuntime`` on the checkpoint (PyTorch backend);
* ``onnxruntime``: ``SlowFastRuntime`` on the export folder ``--engines``;
* ``upstream-style``: :mod:`slowfast_trt.tools.upstream_style`, an eager pipeline with
  upstream's structure (all frames in one vision batch, LM head over every prefill row, slow
  K/V projected again before every decode step);
* ``upstream``: the real upstream code, when ``--upstream-cmd`` names a harness (kept outside
  this repository: upstream's code is not redistributed here). The harness is run as
  ``CMD --ckpt CKPT --frames N.. --new-tokens K --rounds 1 --threads T --crops FILE.npz`` (uint8
  (N, S, S, 3) crops under the key ``str(N)``, the frames the other systems get) and
  prints one JSON object per frame count with ``frames``, ``ttft_ms``, ``decode_ms_per_token``
  and optionally ``ttft_cpu_ms``, ``decode_cpu_ms_per_token``, measured as below.

Every system is measured the same way: time to first token = one generation of 1 token
(vision + pooling + slow K/V + prefill + first token; video decoding and pixel preprocessing
excluded); decode ms/token = wall-clock from the first to the last of K+1 generated tokens over
K (the generation loop's own clock; the harness: a streamer's), and in CPU time (CPU of the
K+1-token run - CPU of the 1-token run) / K; stop tokens ignored. Each
round runs every system once per frame count, the order of systems rotated round by round;
medians over rounds. Both wall-clock and the thread's CPU time are reported: on a shared
machine the CPU time is the steadier number (it leaves out time spent waiting for a core).
Floors: FLOPs of the vision tower and of the prefill (ours: LM head on the last row) over the
single-thread GEMM peak measured at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slowfast_trt.cli.errors import run_cli
from slowfast_trt.tools.flops import gemm_peak_gflops, prefill_flops, vision_flops

QUESTION = "What is happening in this video?"
SYSTEMS = ("torch", "onnxruntime", "upstream-style", "upstream")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.tools.bench_upstream", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint (upstream format)")
    p.add_argument("--engines", help="export folder of the same checkpoint (ONNX Runtime column)")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--frames", type=int, nargs="+", required=True)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="unrecorded rounds of our systems first (default 1)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--upstream-cmd", help="command of an upstream harness (see the module docstring)")
    p.add_argument("--json", dest="json_out")
    return p


class _Clock:
    """Wall-clock and this thread's CPU time of a block, in ms."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc):
        self.wall = (time.perf_counter() - self.wall) * 1e3
        self.cpu = (time.thread_time() - self.cpu) * 1e3


def _pair(run, new_tokens: int) -> dict:
    """``run(n) -> (wall, cpu, token ids, decode ms/token of its own loop)`` for 1 and K+1 tokens
    -> ttft (the 1-token run) and decode: wall from the generation loop's own clock (first to
    last token), CPU as (CPU of the K+1 run - CPU of the 1-token run) / K."""
    wall1, cpu1, _, _ = run(1)
    _, cpu, ids, decode = run(new_tokens + 1)
    return {"ttft_ms": wall1, "ttft_cpu_ms": cpu1, "decode_ms_per_token": decode,
            "decode_cpu_ms_per_token": (cpu - cpu1) / new_tokens, "tokens": list(ids[:8])}


def runtime_system(rt):
    """A ``SlowFastRuntime`` as a system: crop time (pixel preprocessing) is taken out."""

    def measure(crops, new_tokens: int) -> dict:
        def run(n):
            with _Clock() as clock, rt.open_video(crops) as session:
                session.ignore_stop_tokens = True
                result = session.ask(QUESTION, max_new_tokens=n)
            skip = result.timings_ms.get("preprocess_ms", 0.0) + result.timings_ms.get("video_decode_ms", 0.0)
            counts.update(slow_tokens=result.slow_tokens, fast_tokens=result.fast_tokens, prompt_tokens=result.prompt_tokens)
            return clock.wall - skip, clock.cpu - skip, result.token_ids, result.timings_ms.get("decode_ms_per_token")

        counts = {}
        return {**_pair(run, new_tokens), **counts}

    return measure


def upstream_style_system(ckpt: str):
    from slowfast_trt.sampling import SamplingParams
    from slowfast_trt.tools.upstream_style import UpstreamStyleGenerator

    gen = UpstreamStyleGenerator.load(ckpt)
    gen.stop_ids = ()  # exactly K tokens, as the other systems

    def measure(crops, new_tokens: int) -> dict:
        def run(n):
            from slowfast_trt.preprocess import normalize

            normalize(crops)  # upstream's image processor: pixel preprocessing, not timed (see encode_crops)
            with _Clock() as clock:
                video = gen.encode_crops(crops)
                result = gen.generate(QUESTION, video=video, sampling=SamplingParams(max_new_tokens=n))
            return clock.wall, clock.cpu, result.token_ids, result.timings_ms.get("decode_ms_per_token")

        return _pair(run, new_tokens)

    return measure


def upstream_round(cmd: str, ckpt: str, frames: list[int], new_tokens: int, threads: int, crops_file: Path) -> dict:
    """One run of the harness over ``frames``: frame count -> its JSON record."""
    argv = shlex.split(cmd) + ["--ckpt", str(ckpt), "--frames", *map(str, frames), "--new-tokens", str(new_tokens),
                               "--rounds", "1", "--threads", str(threads), "--crops", str(crops_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    records = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[int(record["frames"])] = record
    if proc.returncode != 0 or set(records) != set(frames):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ValueError(f"--upstream-cmd failed (exit {proc.returncode}): {' | '.join(tail)}")
    return records


def _crops(video: str, frames: list[int]) -> dict:
    from slowfast_trt.preprocess import resize_and_center_crop
    from slowfast_trt.video import load_video

    return {n: resize_and_center_crop(load_video(video, n).frames) for n in frames}


def _load_systems(args) -> dict:
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    systems = {}
    if "torch" in args.systems:
        systems["torch"] = runtime_system(SlowFastRuntime.load(args.ckpt, backend="torch", device="cpu"))
    if "onnxruntime" in args.systems and args.engines:
        systems["onnxruntime"] = runtime_system(SlowFastRuntime.load(args.engines, backend="onnxruntime",
                                                                     device="cpu", threads=args.threads))
    if "upstream-style" in args.systems:
        systems["upstream-style"] = upstream_style_system(args.ckpt)
    return systems


def run_rounds(args, systems: dict, crops: dict, crops_file: Path | None) -> list[dict]:
    """Every round: each system once per frame count, the system order rotated."""
    names = list(systems) + (["upstream"] if crops_file is not None else [])
    for _ in range(args.warmup):  # not recorded (the harness warms itself up)
        for name in systems:
            for n in args.frames:
                systems[name](crops[n], 2)
    samples = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        frames = args.frames if r % 2 == 0 else args.frames[::-1]
        for name in order:
            if name == "upstream":
                got = upstream_round(args.upstream_cmd, args.ckpt, frames, args.new_tokens, args.threads, crops_file)
                samples += [{"system": name, "frames": n, "round": r, **got[n]} for n in frames]
            else:
                samples += [{"system": name, "frames": n, "round": r, **systems[name](crops[n], args.new_tokens)}
                            for n in frames]
        print(f"[bench_upstream] round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return samples


def summarize(samples: list[dict], floors: dict) -> list[dict]:
    rows = []
    keys = ("ttft_ms", "ttft_cpu_ms", "decode_ms_per_token", "decode_cpu_ms_per_token")
    for name in dict.fromkeys(s["system"] for s in samples):
        for n in dict.fromkeys(s["frames"] for s in samples):
            mine = [s for s in samples if s["system"] == name and s["frames"] == n]
            row = {"system": name, "frames": n, "rounds": len(mine)}
            for key in keys:
                values = [s[key] for s in mine if s.get(key) is not None]
                row[key] = statistics.median(values) if values else None
            row["tokens"] = mine[0].get("tokens")
            rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["system"] == "upstream" and r["frames"] == row["frames"]), None)
        base = base or next((r for r in rows if r["system"] == "upstream-style" and r["frames"] == row["frames"]), None)
        row["versus"] = base["system"] if base else None
        for key in keys:
            row[f"{key}_ratio"] = row[key] / base[key] if base and row[key] and base.get(key) else None
        row.update(floors.get(row["frames"], {}))
    return rows


def _floors(ckpt: str, samples: list[dict], peak: float) -> dict:
    """Frame count -> FLOPs and floors of the vision tower and of our prefill (LM head on one row)."""
    from slowfast_trt.models.slowfast.checkpoint import open_model

    model = open_model(ckpt)  # shapes only: parameters stay on the meta device
    out = {}
    for s in samples:
        if "prompt_tokens" not in s or s["frames"] in out:
            continue
        rows, slow, fast = s["prompt_tokens"], s["slow_tokens"], s["fast_tokens"]
        v = vision_flops(model.vision.spec, s["frames"], model.config.visual.image_size)
        p = prefill_flops(model.config, rows, slow, rows - fast, lm_head_rows=1)
        out[s["frames"]] = {"vision_gflop": v / 1e9, "prefill_gflop": p / 1e9, "vision_floor_ms": v / peak / 1e6,
                            "prefill_floor_ms": p / peak / 1e6}
    return out


def format_table(rows: list[dict]) -> str:
    head = ("system", "frames", "ttft", "ttft cpu", "x ttft", "x cpu", "dec ms/tok", "dec cpu", "x dec", "x dec cpu",
            "vis floor", "pre floor")
    lines = ["  ".join(f"{h:>14}" for h in head)]
    for r in rows:
        cells = (r["system"], r["frames"], r["ttft_ms"], r["ttft_cpu_ms"], r["ttft_ms_ratio"], r["ttft_cpu_ms_ratio"],
                 r["decode_ms_per_token"], r["decode_cpu_ms_per_token"], r["decode_ms_per_token_ratio"],
                 r["decode_cpu_ms_per_token_ratio"], r.get("vision_floor_ms"), r.get("prefill_floor_ms"))
        lines.append("  ".join(f"{'-':>14}" if c is None else f"{c:>14.2f}" if isinstance(c, float) else f"{c:>14}"
                               for c in cells))
    return "\n".join(lines)


def bench(args) -> dict:
    import numpy as np
    import torch

    if args.rounds < 1 or args.new_tokens < 2:
        raise ValueError("--rounds must be >= 1 and --new-tokens >= 2")
    if "upstream" in args.systems and args.upstream_cmd is None:
        args.systems = [s for s in args.systems if s != "upstream"]
    torch.set_num_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()]
    peak = gemm_peak_gflops()
    crops = _crops(args.video, args.frames)
    systems = _load_systems(args)
    with tempfile.TemporaryDirectory() as tmp:
        crops_file = None
        if "upstream" in args.systems:
            crops_file = Path(tmp) / "crops.npz"  # the same frames for the harness, one array per frame count
            np.savez(crops_file, **{str(n): crops[n] for n in args.frames})
        samples = run_rounds(args, systems, crops, crops_file)
    rows = summarize(samples, _floors(args.ckpt, samples, peak))
    return {"machine": _machine(), "threads": args.threads, "gemm_peak_gflops": peak, "load_before": load,
            "load_after": [round(x, 2) for x in os.getloadavg()], "new_tokens": args.new_tokens, "rounds": args.rounds,
            "results": rows, "samples": samples}


def _machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    out = bench(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['machine']['cpu']}, {out['machine']['cores']} cores, {out['threads']} thread(s), GEMM peak "
          f"{out['gemm_peak_gflops']:.1f} GFLOP/s, load {out['load_before']} -> {out['load_after']}; "
          f"{out['new_tokens']} new tokens, median of {out['rounds']} rounds (ms; x = over {out['results'][0]['versus']})")
    print(format_table(out["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
