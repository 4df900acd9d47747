"""Peak memory of ``python -m slowfast_trt.export`` on a model with real 7B layer sizes.

    python -m slowfast_trt.tools.bench_export_memory [--layers 2 3 [28]] [--full-vision]
        [--precision fp16] [--frames 16] [--workdir DIR] [--json OUT] [--keep]

For each layer count: writes (streaming, see :mod:`slowfast_trt.fixtures.sized_checkpoint`) a
random bf16 checkpoint with Qwen2-7B widths (hidden 3584, 28/4 heads, intermediate 18944,
vocab 152064 resized to 151646 rows, a tiny vision tower or with ``--full-vision`` the 7B's
ConvNeXt-XXL; hybrid layers every 2 layers below 8 layers, every 8 like the released model
from 8 layers on), runs the export CLI in a child
process and takes its peak RSS from ``ru_maxrss`` (RUSAGE_CHILDREN of a helper process whose
only child is the export), with a /proc polling timeline to attribute the peak to an export
step. It compares the peak with the weight bytes of the largest exported subgraph (target:
peak <= 1.3x).

The exporter reads the checkpoint one subgraph at a time, traces with zero-page shape stubs
and streams every large weight from the safetensors file into the data file in 16 MiB row
blocks (:mod:`slowfast_trt.export.subgraphs`), so the peak follows neither the model size nor
its largest tensor:

    peak = base + overhead(layers)

where ``base`` is the RSS of a child that only imports the exporter and ``overhead`` the rest
(graph protos and the trace, which grow with the layer count, small tensors, a few blocks),
fitted linearly in the number of layers over the runs. The full 7B prediction evaluates it at
28 layers and divides by the 7B decoder's weight bytes (sizes from
``tests/data/param_manifest_7b.json``); ``--layers 28`` measures it directly (~15 GB
checkpoint + ~14 GB export on disk, both deleted afterwards unless ``--keep``). The largest
single tensor is reported too (the LM head, 1.0 GiB in fp16): a peak - base below it shows
that no weight is ever copied whole.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from slowfast_trt.cli.errors import run_cli

TARGET_RATIO = 1.3
GIB = 1 << 30
FULL_LAYERS = 28
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
_MANIFEST_7B = Path(__file__).resolve().parents[1] / "tests" / "data" / "param_manifest_7b.json"


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], interval: float = 0.05) -> dict:
    """Run ``cmd``; a timeline of (seconds, rss, last progress line), stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    timeline = []
    while proc.poll() is None:
        timeline.append((time.perf_counter() - start, _rss_bytes(proc.pid), lines[-1].strip() if lines else ""))
        time.sleep(interval)
    reader.join(timeout=5)
    stdout = proc.stdout.read()
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - start, "timeline": timeline,
            "stderr": "".join(lines), "stdout": stdout}


def child_peak(cmd: list[str], interval: float = 0.05) -> dict:
    """``run_measured`` in a fresh helper process, so RUSAGE_CHILDREN holds exactly this export."""
    code = (
        "import json, resource, sys\n"
        "from slowfast_trt.tools.bench_export_memory import run_measured\n"
        f"result = run_measured({cmd!r}, {interval!r})\n"
        "result['peak_rss'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _initializer_bytes(init) -> int:
    import math

    import numpy as np
    import onnx

    return math.prod(init.dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def subgraph_weight_bytes(export_dir: Path) -> dict[str, int]:
    """Initializer bytes of every ONNX graph (external data not read), plus the embedding table."""
    import onnx

    sizes = {}
    for path in sorted(export_dir.glob("*.onnx")):
        if path.name.endswith(".trt.onnx"):
            continue
        model = onnx.load(str(path), load_external_data=False)
        sizes[path.stem] = sum(_initializer_bytes(init) for init in model.graph.initializer)
    for npy in export_dir.glob("*.npy"):
        sizes[npy.stem] = npy.stat().st_size - 128  # minus the .npy header
    return sizes


def largest_tensor_bytes(export_dir: Path) -> tuple[str, int]:
    """The largest single weight of any exported graph (name, bytes)."""
    import onnx

    best = ("", 0)
    for path in sorted(export_dir.glob("*.onnx")):
        if not path.name.endswith(".trt.onnx"):
            for init in onnx.load(str(path), load_external_data=False).graph.initializer:
                if _initializer_bytes(init) > best[1]:
                    best = (f"{path.stem}:{init.name}", _initializer_bytes(init))
    return best


def full_7b_bytes(precision: str) -> tuple[dict[str, int], dict[str, int]]:
    """Weight bytes of the released 7B checkpoint per exported part at ``precision``, and the
    largest single tensor of each part."""
    data = json.loads(_MANIFEST_7B.read_text())
    rows = data.get("post_load_vocab_rows", 151646)
    per = _BYTES[precision]
    parts = {"decoder": 0, "embed_tokens": 0, "vision": 0, "pooler": 0, "slow_kv": 0}
    largest = dict.fromkeys(parts, 0)
    for p in data["params"]:
        name, numel = p["name"], p["numel"]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            numel = rows * p["shape"][1]
        if name == "model.embed_tokens.weight":
            part = "embed_tokens"
        elif name.startswith("model.vision_tower."):
            part, numel = "vision", 0 if ".head." in name else numel
        elif name.startswith("model.mm_projector."):
            part = "pooler"
        elif "cross_attn_kv_proj" in name:
            part = "slow_kv"
        else:
            part = "decoder"
        parts[part] += numel * per
        largest[part] = max(largest[part], numel * per)
    return parts, largest


def _base_rss(interval: float) -> int:
    cmd = [sys.executable, "-c", "import torch, onnx, slowfast_trt.cli.export, slowfast_trt.export.subgraphs"]
    return child_peak(cmd, interval)["peak_rss"]


def _peak_step(timeline: list) -> str:
    if not timeline:
        return ""
    _, _, line = max(timeline, key=lambda item: item[1])
    return re.sub(r"^\[export\s+[\d.]+s\]\s*", "", line)


def _step_peaks(timeline: list) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for _, rss, line in timeline:
        step = re.sub(r"^\[export\s+[\d.]+s\]\s*", "", line)
        peaks[step] = max(peaks.get(step, 0), rss)
    return peaks


VISION_7B = {"vision_dims": (384, 768, 1536, 3072), "vision_depths": (3, 4, 30, 3)}  # ConvNeXt-XXL, 1.57 GiB fp16


def sized_spec(layers: int, full_vision: bool = False):
    from slowfast_trt.fixtures.sized_checkpoint import SizedSpec

    return SizedSpec(layers=layers, cross_every=2 if layers < 8 else 8, **(VISION_7B if full_vision else {}))


def bench_one(layers: int, args, workdir: Path) -> dict:
    from slowfast_trt.fixtures.sized_checkpoint import write_sized_checkpoint

    tag = f"{layers}l" + ("_vision" if args.full_vision else "")
    ckpt, out = workdir / f"ckpt_{tag}", workdir / f"export_{tag}"
    write_seconds = None
    if not (ckpt / "model.safetensors").is_file():
        print(f"writing the {layers}-layer checkpoint to {ckpt} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        write_sized_checkpoint(ckpt, sized_spec(layers, args.full_vision), stream=True)
        write_seconds = round(time.perf_counter() - start, 1)
    cmd = [sys.executable, "-m", "slowfast_trt.export", "--ckpt", str(ckpt), "--out", str(out), "--backend", "onnxruntime",
           "--precision", args.precision, "--frames", str(args.frames), "--max-seq-len", str(args.max_seq_len), "--force"]
    print(f"exporting ({' '.join(cmd[3:])}) ...", file=sys.stderr, flush=True)
    result = child_peak(cmd, args.interval)
    if result["returncode"] != 0:
        raise SystemExit(f"export failed:\n{result['stderr'][-4000:]}")
    weights = subgraph_weight_bytes(out)
    largest = max(weights, key=weights.get)
    tensor_name, tensor_bytes = largest_tensor_bytes(out)
    step = max(1, len(result["timeline"]) // 400)  # keep the JSON small (the peak is in step_peaks)
    return {
        "layers": layers, "full_vision": args.full_vision, "peak_rss": result["peak_rss"], "seconds": round(result["seconds"], 1),
        "checkpoint_write_seconds": write_seconds, "checkpoint_bytes": (ckpt / "model.safetensors").stat().st_size,
        "peak_step": _peak_step(result["timeline"]), "step_peaks": _step_peaks(result["timeline"]),
        "weights": weights, "largest": largest, "largest_bytes": weights[largest], "ratio": result["peak_rss"] / weights[largest],
        "largest_tensor": tensor_name, "largest_tensor_bytes": tensor_bytes,
        "timeline": [(round(t, 2), rss, line) for t, rss, line in result["timeline"][::step]],
    }


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares a + b * x (b = 0 with one distinct x)."""
    xs = {x for x, _ in points}
    if len(xs) < 2:
        return sum(y for _, y in points) / len(points), 0.0
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def extrapolate(runs: list[dict], base: int, precision: str) -> dict:
    """Predicted peak of the full 7B export: base + overhead fitted over the runs, at 28 layers."""
    full, largest = full_7b_bytes(precision)
    for r in runs:
        r["overhead"] = r["peak_rss"] - base
    a, b = _fit([(r["layers"], r["overhead"]) for r in runs])
    peak = base + a + b * FULL_LAYERS
    measured = [r for r in runs if r["layers"] == FULL_LAYERS]
    return {
        "full_7b_bytes": full, "full_7b_largest_tensor": largest, "overhead_fit": {"a": a, "per_layer": b},
        "predicted_peak_rss": peak, "predicted_ratio": peak / full["decoder"], "target_ratio": TARGET_RATIO,
        "measured_28_layers_ratio": measured[0]["ratio"] if measured else None,
    }


def print_report(runs: list[dict], base: int, extra: dict) -> None:
    print(f"{'layers':>6} {'largest graph':>14} {'GiB':>7} {'peak RSS GiB':>12} {'ratio':>6} {'target':>6} "
          f"{'peak-base GiB':>13} {'max tensor GiB':>14} {'export s':>8}  peak during")
    for r in runs:
        ok = "ok" if r["ratio"] <= TARGET_RATIO else "OVER"
        print(f"{r['layers']:>6} {r['largest']:>14} {r['largest_bytes'] / GIB:7.2f} {r['peak_rss'] / GIB:12.2f} "
              f"{r['ratio']:6.2f} {ok:>6} {r['overhead'] / GIB:13.3f} {r['largest_tensor_bytes'] / GIB:14.2f} "
              f"{r['seconds']:8.1f}  {r['peak_step']}")
    full = extra["full_7b_bytes"]
    parts = ", ".join(f"{name} {nbytes / GIB:.2f}" for name, nbytes in full.items())
    fit = extra["overhead_fit"]
    print(f"base RSS (imports only): {base / GIB:.2f} GiB; full 7B weights (GiB): {parts}; "
          f"largest 7B tensor {max(extra['full_7b_largest_tensor'].values()) / GIB:.2f} GiB")
    print(f"peak - base fit: {fit['a'] / GIB:.3f} GiB + {fit['per_layer'] / 2**20:.1f} MiB per layer")
    print(f"full 7B predicted peak: {extra['predicted_peak_rss'] / GIB:.2f} GiB = {extra['predicted_ratio']:.3f}x "
          f"the largest graph (decoder {full['decoder'] / GIB:.2f} GiB; target {TARGET_RATIO}x)")
    if extra["measured_28_layers_ratio"] is not None:
        print(f"full 28 layers measured: {extra['measured_28_layers_ratio']:.3f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m slowfast_trt.tools.bench_export_memory", description=__doc__.split("\n")[0]
    )
    p.add_argument("--layers", type=int, nargs="+", default=[2, 3],
                   help="decoder layer counts (2 3: the overhead per layer; 28: the full 7B decoder, ~30 GB of disk)")
    p.add_argument("--precision", choices=tuple(_BYTES), default="fp16")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--workdir", type=Path, default=Path(".scratch/bench_export_memory"))
    p.add_argument("--json", type=Path, default=None, help="write the results here (default WORKDIR/results.json)")
    p.add_argument("--interval", type=float, default=0.05, help="RSS polling interval in seconds")
    p.add_argument("--full-vision", action="store_true",
                   help="the 7B's ConvNeXt-XXL vision tower (1.57 GiB) instead of a tiny one")
    p.add_argument("--keep", action="store_true", help="keep checkpoints and exports (default: delete both)")
    args = p.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = _base_rss(args.interval)
    runs = []
    for layers in sorted(set(args.layers)):
        try:
            runs.append(bench_one(layers, args, args.workdir))
        finally:
            if not args.keep:  # multi-GB: gone before the next layer count is written
                tag = f"{layers}l" + ("_vision" if args.full_vision else "")
                shutil.rmtree(args.workdir / f"export_{tag}", ignore_errors=True)
                shutil.rmtree(args.workdir / f"ckpt_{tag}", ignore_errors=True)
    extra = extrapolate(runs, base, args.precision)
    print_report(runs, base, extra)
    out = args.json or args.workdir / "results.json"
    out.write_text(json.dumps({"precision": args.precision, "frames": args.frames, "max_seq_len": args.max_seq_len,
                               "base_rss": base, "runs": runs, **extra}, indent=1) + "\n")
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
