"""Peak memory of ``python -m slowfast_trt.export`` on a model with real 7B layer sizes.

    python -m slowfast_trt.export.bench_export_memory [--layers 3 [2]] [--precision fp16]
        [--frames 16] [--workdir DIR] [--json OUT] [--keep]

For each layer count: writes a random bf16 checkpoint with Qwen2-7B widths (hidden 3584,
28/4 heads, intermediate 18944, vocab 152064 resized to 151646 rows, layer 0 hybrid, a tiny
vision tower; :mod:`slowfast_trt.fixtures.sized_checkpoint`), runs the export CLI in a child
process and takes its peak RSS from ``ru_maxrss`` (RUSAGE_CHILDREN of a helper process whose
only child is the export), with a /proc polling timeline to attribute the peak to an export
step. It compares the peak with
the weight bytes of the largest exported subgraph (target: peak <= 1.3x) and extrapolates to
the full 7B checkpoint with

    peak = base + loaded_weights + max over graphs (k * graph_weights)

where ``base`` is the RSS of a child that only imports the exporter, ``loaded_weights`` all
weights the loader holds (every subgraph, embedding table included), and ``k`` the extra
copies the export of one graph makes, measured from the run's largest graph. ``k`` depends
on the graph's size: ``torch.onnx.export`` keeps weights inside the proto below 2 GiB and
writes them to external files above, so each 7B graph gets the ``k`` of its regime (3
layers: a 2.3 GiB decoder, like the 7B decoder's 13 GiB; 2 layers: 1.9 GiB, like the 7B
vision tower's 1.6 GiB). The 7B sizes come from ``tests/data/param_manifest_7b.json``.
About 4 minutes and 12 GB of memory per layer count on 2 cores.
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

TARGET_RATIO = 1.3
GIB = 1 << 30
PROTO_LIMIT = 2 * GIB
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
        "from slowfast_trt.export.bench_export_memory import run_measured\n"
        f"result = run_measured({cmd!r}, {interval!r})\n"
        "result['peak_rss'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def subgraph_weight_bytes(export_dir: Path) -> dict[str, int]:
    """Initializer bytes of every ONNX graph (external data not read), plus the embedding table."""
    import math

    import numpy as np
    import onnx

    sizes = {}
    for path in sorted(export_dir.glob("*.onnx")):
        if path.name.endswith(".trt.onnx"):
            continue
        model = onnx.load(str(path), load_external_data=False)
        sizes[path.stem] = sum(
            math.prod(init.dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
            for init in model.graph.initializer
        )
    for npy in export_dir.glob("*.npy"):
        sizes[npy.stem] = npy.stat().st_size - 128  # minus the .npy header
    return sizes


def full_7b_bytes(precision: str) -> dict[str, int]:
    """Weight bytes of the released 7B checkpoint per exported part, at ``precision``."""
    data = json.loads(_MANIFEST_7B.read_text())
    rows = data.get("post_load_vocab_rows", 151646)
    per = _BYTES[precision]
    parts = {"decoder": 0, "embed_tokens": 0, "vision": 0, "pooler": 0, "slow_kv": 0}
    for p in data["params"]:
        name, numel = p["name"], p["numel"]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            numel = rows * p["shape"][1]
        if name == "model.embed_tokens.weight":
            parts["embed_tokens"] += numel * per
        elif name.startswith("model.vision_tower."):
            parts["vision"] += 0 if ".head." in name else numel * per
        elif name.startswith("model.mm_projector."):
            parts["pooler"] += numel * per
        elif "cross_attn_kv_proj" in name:
            parts["slow_kv"] += numel * per
        else:
            parts["decoder"] += numel * per
    return parts


def _base_rss(interval: float) -> int:
    cmd = [sys.executable, "-c", "import torch, onnx, slowfast_trt.export.cli, slowfast_trt.export.subgraphs"]
    return child_peak(cmd, interval)["peak_rss"]


def _peak_step(timeline: list) -> str:
    if not timeline:
        return ""
    _, _, line = max(timeline, key=lambda item: item[1])
    return re.sub(r"^\[export\s+[\d.]+s\]\s*", "", line)


def bench_one(layers: int, args, workdir: Path) -> dict:
    from slowfast_trt.fixtures.sized_checkpoint import SizedSpec, write_sized_checkpoint

    ckpt, out = workdir / f"ckpt_{layers}l", workdir / f"export_{layers}l"
    if not (ckpt / "model.safetensors").is_file():
        print(f"writing the {layers}-layer checkpoint to {ckpt} ...", file=sys.stderr, flush=True)
        write_sized_checkpoint(ckpt, SizedSpec(layers=layers))
    cmd = [sys.executable, "-m", "slowfast_trt.export", "--ckpt", str(ckpt), "--out", str(out), "--backend", "onnxruntime",
           "--precision", args.precision, "--frames", str(args.frames), "--max-seq-len", str(args.max_seq_len), "--force"]
    print(f"exporting ({' '.join(cmd[3:])}) ...", file=sys.stderr, flush=True)
    result = child_peak(cmd, args.interval)
    if result["returncode"] != 0:
        raise SystemExit(f"export failed:\n{result['stderr'][-4000:]}")
    weights = subgraph_weight_bytes(out)
    largest = max(weights, key=weights.get)
    step = max(1, len(result["timeline"]) // 400)  # keep the JSON small
    loaded = sum(v for k, v in weights.items() if k != "decoder_nocross")  # it shares decoder.onnx.data
    return {
        "layers": layers, "peak_rss": result["peak_rss"], "seconds": round(result["seconds"], 1),
        "peak_step": _peak_step(result["timeline"]), "weights": weights, "largest": largest,
        "largest_bytes": weights[largest], "loaded_bytes": loaded, "ratio": result["peak_rss"] / weights[largest],
        "timeline": [(round(t, 2), rss, line) for t, rss, line in result["timeline"][::step]],
    }


def _regime(nbytes: int) -> str:
    # torch.onnx.export keeps a graph's weights inside the proto below 2 GiB and writes them
    # as external files above: the two cost different extra copies (see the module docstring).
    return "in_proto" if nbytes < PROTO_LIMIT else "external"


def extrapolate(runs: list[dict], base: int, precision: str) -> dict:
    """Predicted peak of the full 7B export from the k measured in each size regime."""
    full = full_7b_bytes(precision)
    loaded_7b = sum(full.values())
    k = {}
    for r in runs:
        r["k"] = (r["peak_rss"] - base - r["loaded_bytes"]) / r["largest_bytes"]
        r["regime"] = _regime(r["largest_bytes"])
        k[r["regime"]] = max(k.get(r["regime"], r["k"]), r["k"])
    extra, unknown = {}, []
    for part, nbytes in full.items():
        if part == "embed_tokens":
            continue  # written with np.save from the loaded table, no export copy
        if _regime(nbytes) in k:
            extra[part] = k[_regime(nbytes)] * nbytes
        else:
            unknown.append(f"{part} ({nbytes / GIB:.2f} GiB, {_regime(nbytes)} regime not measured)")
    worst = max(extra, key=extra.get) if extra else None
    peak = base + loaded_7b + (extra[worst] if worst else 0.0)
    return {"full_7b_bytes": full, "k": k, "peak_part": worst, "unmeasured": unknown, "predicted_peak_rss": peak,
            "predicted_ratio": peak / full["decoder"], "target_ratio": TARGET_RATIO}


def print_report(runs: list[dict], base: int, extra: dict) -> None:
    print(f"{'layers':>6} {'largest graph':>14} {'GiB':>7} {'loaded GiB':>10} {'peak RSS GiB':>12} {'ratio':>6} "
          f"{'target':>6} {'k':>6} {'regime':>9}  peak during")
    for r in runs:
        ok = "ok" if r["ratio"] <= TARGET_RATIO else "OVER"
        print(f"{r['layers']:>6} {r['largest']:>14} {r['largest_bytes'] / GIB:7.2f} {r['loaded_bytes'] / GIB:10.2f} "
              f"{r['peak_rss'] / GIB:12.2f} {r['ratio']:6.2f} {ok:>6} {r['k']:6.2f} {r['regime']:>9}  {r['peak_step']}")
    full = extra["full_7b_bytes"]
    parts = ", ".join(f"{name} {nbytes / GIB:.2f}" for name, nbytes in full.items())
    print(f"base RSS (imports only): {base / GIB:.2f} GiB; full 7B weights (GiB): {parts}")
    print(f"full 7B predicted peak: {extra['predicted_peak_rss'] / GIB:.1f} GiB (during {extra['peak_part']}) = "
          f"{extra['predicted_ratio']:.2f}x the largest graph (decoder; target {TARGET_RATIO}x)")
    for note in extra["unmeasured"]:
        print(f"  not in the prediction: {note}; run --layers 2 3 to measure both regimes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m slowfast_trt.export.bench_export_memory", description=__doc__.split("\n")[0]
    )
    p.add_argument("--layers", type=int, nargs="+", default=[3],
                   help="decoder layer counts (3: decoder > 2 GiB like the 7B's; 2: < 2 GiB like the 7B vision graph)")
    p.add_argument("--precision", choices=tuple(_BYTES), default="fp16")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--workdir", type=Path, default=Path(".scratch/bench_export_memory"))
    p.add_argument("--json", type=Path, default=None, help="write the results here (default WORKDIR/results.json)")
    p.add_argument("--interval", type=float, default=0.05, help="RSS polling interval in seconds")
    p.add_argument("--keep", action="store_true", help="keep checkpoints and exports (default: delete the exports)")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = _base_rss(args.interval)
    runs = [bench_one(layers, args, args.workdir) for layers in sorted(set(args.layers))]
    extra = extrapolate(runs, base, args.precision)
    print_report(runs, base, extra)
    out = args.json or args.workdir / "results.json"
    out.write_text(json.dumps({"precision": args.precision, "frames": args.frames, "max_seq_len": args.max_seq_len,
                               "base_rss": base, "runs": runs, **extra}, indent=1) + "\n")
    print(f"results: {out}", file=sys.stderr)
    if not args.keep:
        for layers in args.layers:
            shutil.rmtree(args.workdir / f"export_{layers}l", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
