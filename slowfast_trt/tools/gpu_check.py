"""``python -m slowfast_trt.tools.gpu_check`` (``slowfast-gpu-check``): every GPU check, one command.

Run from the repository root on a CUDA machine; each step is a subprocess with a time limit
(one failure does not stop the others), all inside ``--budget-s`` (default 470 s: the whole check
is meant to finish within 8 minutes on an H200):

| step         | what it runs                                                                        |
|--------------|-------------------------------------------------------------------------------------|
| build        | the CUDA extension for this GPU's architecture only: ``CMAKE_ARGS=-DSLOWFAST_CUDA_ARCHS=<cc> pip install --no-build-isolation --no-deps -e .`` |
| pytest-gpu   | ``pytest -m gpu`` over every test file that has a ``gpu`` mark                      |
| bench-kernel | ``slowfast_trt.tools.bench_cross_attn``: decode and prefill at 16/64/96 frames against the byte and FLOP floors (measured copy bandwidth and matmul peak) |
| assets       | a random checkpoint at Qwen2-7B widths with 4 layers (``fixtures/sized_checkpoint.py``) and a sample video |
| bench-decode | ``python -m slowfast_trt.bench --device cuda`` on it, torch backend, fp16, ``dynamic`` vs ``cuda-graph`` decode steps; ms/token against the bandwidth floor (decoder weights + KV rows read per token) |

It writes one JSON (``--json``, default ``gpu_check/gpu_check.json``, with every step's command,
status, time, summary and log tail, and the benchmarks' numbers) and prints one table. With
``--dry-run``, or where torch sees no CUDA device, nothing runs: every step is listed with its
command and the reason it was skipped, and the exit status is 0. Otherwise the exit status is 1
when a step failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root in a source checkout
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # bytes/s, used when not measured
DECODE_FRAMES, NEW_TOKENS, LAYERS = (16, 64), 32, 4


@dataclass
class Step:
    name: str
    what: str
    command: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # Python modules the step imports
    status: str = "pending"
    seconds: float | None = None
    summary: str = ""
    log: str | None = None
    output_tail: str = ""

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.command)


def gpu_test_files(root: Path = ROOT) -> list[str]:
    """Test files with a ``gpu`` mark (the whole suite also collects files whose imports need
    packages a GPU machine may lack, e.g. the server's)."""
    tests = root / "tests"
    return [str(p.relative_to(root)) for p in sorted(tests.glob("test_*.py")) if "mark.gpu" in p.read_text()]


def plan(out: Path, arch: str) -> list[Step]:
    """The steps, in the order they run."""
    py = sys.executable
    ckpt, video = out / "sized_ckpt", out / "clip.mp4"
    write_assets = (
        "from slowfast_trt.fixtures.sized_checkpoint import SizedSpec, write_sized_checkpoint; "
        "from slowfast_trt.fixtures.sample_video import write_sample_video; "
        f"write_sized_checkpoint({str(ckpt)!r}, SizedSpec(layers={LAYERS}), stream=True); "
        f"write_sample_video({str(video)!r}, num_frames={max(DECODE_FRAMES) + 8})"
    )
    return [
        Step("build", f"CUDA extension for sm_{arch} only", [py, "-m", "pip", "install", "--no-build-isolation",
             "--no-deps", "-e", "."], 180, env={"CMAKE_ARGS": f"-DSLOWFAST_CUDA_ARCHS={arch}"}),
        Step("pytest-gpu", "GPU tests (kernels, streams, dispatch, CUDA-graph decode, device sampling, ORT)",
             [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *gpu_test_files()], 220,
             needs=("pytest",)),
        Step("bench-kernel", "cross-attention kernel vs SDPA and upstream, 16/64/96 frames, against the floors",
             [py, "-m", "slowfast_trt.tools.bench_cross_attn", "--frames", "16", "64", "96", "--iters", "30",
              "--json", str(out / "bench_cross_attn.json")], 100),
        Step("assets", f"random checkpoint at 7B widths ({LAYERS} layers) and a sample video",
             [py, "-c", write_assets], 150, needs=("av",)),
        Step("bench-decode", "torch backend fp16 on CUDA, dynamic vs cuda-graph decode steps, ms/token vs floor",
             [py, "-m", "slowfast_trt.bench", "--ckpt", str(ckpt), "--video", str(video), "--frames",
              *map(str, DECODE_FRAMES), "--new-tokens", str(NEW_TOKENS), "--runs", "2", "--warmup", "1",
              "--decode-steps", "dynamic", "cuda-graph", "--backend", "torch", "--device", "cuda", "--dtype", "float16",
              "--json", str(out / "bench_decode.json")], 150, needs=("av",)),
    ]


def _missing(modules) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def run_step(step: Step, out: Path, deadline: float) -> None:
    left = deadline - time.monotonic()
    missing = _missing(step.needs)
    if missing:
        step.status, step.summary = "not run", f"Python package(s) missing: {', '.join(missing)} (pip install them)"
        return
    if left < 15:
        step.status, step.summary = "not run", "the time budget is used up"
        return
    step.log = str(out / f"{step.name}.log")
    start = time.monotonic()
    try:
        with open(step.log, "w") as log:
            proc = subprocess.run(step.command, cwd=ROOT, env={**os.environ, **step.env}, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=min(step.timeout_s, left))
        step.status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        step.status = f"failed (timeout {min(step.timeout_s, left):.0f} s)"
    step.seconds = round(time.monotonic() - start, 1)
    step.output_tail = Path(step.log).read_text(errors="replace")[-4000:]
    if step.status == "ok" or step.name == "pytest-gpu":
        try:
            step.summary = SUMMARIES[step.name](step, out) if step.name in SUMMARIES else ""
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
            step.summary = f"could not read its results ({type(exc).__name__}: {exc})"
    elif not step.summary:
        lines = [line for line in step.output_tail.splitlines() if line.strip()]
        step.summary = lines[-1][:200] if lines else ""


# -- summaries of the steps' results -------------------------------------------------------------


def _pytest_summary(step: Step, out: Path) -> str:
    lines = [line for line in step.output_tail.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    summary = lines[-1].strip("= ") if lines else "no pytest summary line (see the log)"
    return summary + ("; PyAV missing: tests that write a video error" if _missing(("av",)) else "")


def _kernel_summary(step: Step, out: Path) -> str:
    data = json.loads((out / "bench_cross_attn.json").read_text())
    parts = []
    for r in data["results"]:
        if r["path"] == "kernel" and (r["phase"], r["batch"], r["rows"]) in (("decode", 1, 1), ("prefill", 1, 200)):
            parts.append(f"{r['phase']} {r['frames']}f {r['time_us']:.0f} us ({r['pct_of_floor']:.0f}% of floor)")
    return "; ".join(parts)


def decoder_weight_bytes(ckpt: Path, element_bytes: int = 2) -> int:
    """Bytes of the decoder tensors read once per generated token (layers, final norm, LM head) at
    ``element_bytes`` per element; the embedding row gathered per token is negligible."""
    with open(ckpt / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    total = 0
    for name, info in header.items():
        if name.startswith(("model.layers.", "model.norm.", "lm_head.")):
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count * element_bytes
    return total


def decode_floors(rows: list[dict], ckpt: Path, bandwidth: float, max_seq_len: int = 8192) -> list[dict]:
    """ms/token floor per bench row: decoder weights + the KV rows each step reads (the whole
    ``max_seq_len`` cache for static/cuda-graph steps, about the valid rows for dynamic ones)."""
    config = json.loads((ckpt / "config.json").read_text())
    layers, kv_width = config["num_hidden_layers"], config["num_key_value_heads"] * (
        config["hidden_size"] // config["num_attention_heads"])
    weights = decoder_weight_bytes(ckpt)
    floors = []
    for row in rows:
        cached = max_seq_len if row["decode_steps"] != "dynamic" else row["fast_tokens"] + 64 + NEW_TOKENS // 2
        nbytes = weights + 2 * layers * cached * kv_width * 2
        floor_ms = nbytes / bandwidth * 1e3
        floors.append({"frames": row["frames"], "decode_steps": row["decode_steps"], "bytes_per_token": nbytes,
                       "floor_ms": floor_ms, "ms_per_token": row["decode_ms_per_token"],
                       "x_floor": row["decode_ms_per_token"] / floor_ms})
    return floors


def _decode_summary(step: Step, out: Path) -> str:
    data = json.loads((out / "bench_decode.json").read_text())
    bandwidth, source = _bandwidth(out, data.get("device", ""))
    if bandwidth is None:
        return "no bandwidth figure for this device"
    floors = decode_floors(data["results"], out / "sized_ckpt", bandwidth)
    step_results = {"bandwidth_bytes_per_s": bandwidth, "bandwidth_source": source, "floors": floors}
    (out / "decode_floors.json").write_text(json.dumps(step_results, indent=1))
    return "; ".join(f"{f['frames']}f {f['decode_steps']} {f['ms_per_token']:.2f} ms/tok (floor {f['floor_ms']:.2f}, "
                     f"x{f['x_floor']:.1f})" for f in floors)


def _bandwidth(out: Path, device: str) -> tuple[float | None, str]:
    kernel = out / "bench_cross_attn.json"
    if kernel.is_file():
        measured = json.loads(kernel.read_text()).get("bandwidth_bytes_per_s")
        if measured:
            return float(measured), "measured device-to-device copy (bench-kernel)"
    for name, value in NOMINAL_BANDWIDTH.items():
        if name in device:
            return value, f"nominal {name}"
    return None, ""


SUMMARIES = {"pytest-gpu": _pytest_summary, "bench-kernel": _kernel_summary, "bench-decode": _decode_summary}


# -- the command ---------------------------------------------------------------------------------


def _device() -> tuple[str | None, str | None, str]:
    """(architecture like "90", device name, why not) without touching CUDA before main runs."""
    import torch

    if not torch.cuda.is_available():
        return None, None, "no CUDA device (torch.cuda.is_available() is False)"
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}", torch.cuda.get_device_name(), ""


def format_table(steps: list[Step]) -> str:
    lines = [f"{'step':13} {'status':22} {'seconds':>8}  summary", "-" * 100]
    for s in steps:
        seconds = f"{s.seconds:.1f}" if s.seconds is not None else "-"
        lines.append(f"{s.name:13} {s.status:22} {seconds:>8}  {s.summary}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.tools.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="list the steps and their commands; run nothing")
    p.add_argument("--out", default="gpu_check", help="folder for logs and results (default gpu_check/)")
    p.add_argument("--json", default=None, help="the one JSON (default OUT/gpu_check.json)")
    p.add_argument("--budget-s", type=float, default=470.0, help="time for all steps together (default 470)")
    p.add_argument("--only", nargs="+", default=None, help="run only these steps (names as in the table)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    arch, device, why = _device()
    dry = args.dry_run or arch is None
    reason = "dry run" if args.dry_run else why
    steps = plan(out, arch or "<cc>")
    if not (ROOT / "pyproject.toml").is_file():
        reason = reason or f"{ROOT} is not a source checkout (run from the repository)"
        dry = True
    deadline = time.monotonic() + args.budget_s
    for step in steps:
        if args.only and step.name not in args.only:
            step.status, step.summary = "skipped", "not in --only"
        elif dry:
            missing = _missing(step.needs)
            step.status = "skipped"
            step.summary = f"{reason}; would run: {step.shell()}" + (f" [needs {', '.join(missing)}]" if missing else "")
        else:
            print(f"[gpu_check] {step.name}: {step.what}", file=sys.stderr, flush=True)
            run_step(step, out, deadline)
    report = {"device": device, "arch": arch, "dry_run": dry, "reason": reason, "date": time.strftime("%Y-%m-%d"),
              "root": str(ROOT), "steps": [asdict(s) for s in steps]}
    for name in ("bench_cross_attn", "bench_decode", "decode_floors"):
        file = out / f"{name}.json"
        if not dry and file.is_file():
            report[name] = json.loads(file.read_text())
    json_path = Path(args.json) if args.json else out / "gpu_check.json"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"slowfast_trt GPU check on {device or 'no GPU'}" + (f" ({reason}: nothing ran)" if dry else ""))
    print(format_table(steps))
    print(f"wrote {json_path}")
    return 0 if dry or all(s.status in ("ok", "skipped") for s in steps) else 1  # "skipped": not in --only


if __name__ == "__main__":
    sys.exit(main())
