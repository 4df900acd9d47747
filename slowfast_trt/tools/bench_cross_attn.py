"""Benchmark the slow-token cross-attention at Qwen2-7B shapes (H=28, Hkv=4, D=128) on one GPU.

For each frame count (slow tokens = 81 x frames) it times a decode step (one row per sequence) and a
prefill (many text rows of one sequence) with:

  upstream  re-projects the slow tokens from hidden size 3584 (LayerNorm + k/v Linear) every call,
            repeats K/V to all query heads and runs masked SDPA (what the upstream model does);
  sdpa      PyTorch SDPA on the cached K/V (GQA without repeat when torch supports enable_gqa);
  kernel    slowfast_trt.ops.cross_attention.kernel.cross_attention (the TensorRT plugin's kernels).

Next to each time it prints achieved GB/s and TFLOP/s and the floor of the op itself: max(bytes moved /
measured copy bandwidth, flops / measured bf16 matmul peak); both ceilings are measured here (a large
device-to-device copy and a large bf16 matmul). Calls are timed inside CUDA graphs when capture works
(no Python overhead), else with CUDA events around an eager loop.

    python -m slowfast_trt.tools.bench_cross_attn --frames 16 64 96 --json bench.json

(``python -m slowfast_trt.tools.gpu_check`` runs it with the other GPU checks.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, TOKENS_PER_FRAME = 28, 4, 128, 3584, 81


@dataclass
class Result:
    phase: str
    frames: int
    slow_tokens: int
    batch: int
    rows: int
    path: str
    time_us: float
    timing: str
    gbps: float
    tflops: float
    floor_us: float
    pct_of_floor: float


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 96], help="frame counts (81 slow tokens each)")
    p.add_argument("--decode-batch", type=int, nargs="+", default=[1, 8], help="sequences per decode step")
    p.add_argument("--prefill-rows", type=int, nargs="+", default=[64, 200], help="text rows of a prefill")
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--paths", nargs="+", choices=["upstream", "sdpa", "kernel"], default=["upstream", "sdpa", "kernel"])
    p.add_argument("--iters", type=int, default=50, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-graphs", action="store_true", help="time eager calls (includes Python overhead)")
    p.add_argument("--json", default="bench_cross_attn.json", help="output file ('' to skip)")
    return p.parse_args(argv)


def time_us(fn, iters: int, warmup: int, graphs: bool) -> tuple[float, str]:
    """Mean time per call over `iters` calls, captured in one CUDA graph when possible."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if graphs:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(iters):
                    fn()
            graph.replay()
            torch.cuda.synchronize()
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) * 1e3 / iters, "graph"
        except RuntimeError as exc:  # capture not supported by some call: fall back to events
            print(f"  (graph capture failed, timing eagerly: {exc})", file=sys.stderr)
            torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters, "events"


def measure_ceilings(dtype: torch.dtype) -> tuple[float, float]:
    """(bytes/s of a 2 GiB device-to-device copy, flop/s of an 8192^3 matmul in dtype)."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t_copy, _ = time_us(lambda: dst.copy_(src), 20, 3, graphs=False)
    del src, dst
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=dtype)
    b = torch.randn(m, m, device="cuda", dtype=dtype)
    t_mm, _ = time_us(lambda: a @ b, 20, 3, graphs=False)
    return 2 * n / (t_copy * 1e-6), 2 * m**3 / (t_mm * 1e-6)


def make_inputs(batch: int, rows_per_seq: int, slow_tokens: int, dtype: torch.dtype) -> dict:
    rows = batch * rows_per_seq
    return {
        "query": torch.randn(rows, HEADS, HEAD_DIM, device="cuda", dtype=dtype),
        "slow_key": torch.randn(batch, KV_HEADS, slow_tokens, HEAD_DIM, device="cuda", dtype=dtype),
        "slow_value": torch.randn(batch, KV_HEADS, slow_tokens, HEAD_DIM, device="cuda", dtype=dtype),
        "slow_lengths": torch.full((batch,), slow_tokens, dtype=torch.int32, device="cuda"),
        "row_offsets": torch.arange(0, rows + 1, rows_per_seq, dtype=torch.int32, device="cuda"),
    }


def sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:  # torch < 2.5: repeat K/V
        group = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=mask
        )


def build_paths(t: dict, batch: int, rows_per_seq: int, dtype: torch.dtype) -> dict:
    from slowfast_trt.ops.cross_attention import kernel as kernels

    slow_tokens = t["slow_key"].shape[2]
    q = t["query"].view(batch, rows_per_seq, HEADS, HEAD_DIM).transpose(1, 2)  # [B, H, r, D]
    hidden = torch.randn(batch, slow_tokens, HIDDEN, device="cuda", dtype=dtype)
    norm = torch.nn.LayerNorm(HIDDEN, device="cuda", dtype=dtype)
    k_proj = torch.nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, device="cuda", dtype=dtype)
    v_proj = torch.nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, device="cuda", dtype=dtype)
    mask = torch.zeros(batch, 1, 1, slow_tokens, device="cuda", dtype=torch.bool) | True
    out = torch.empty(batch * rows_per_seq, HEADS * HEAD_DIM, device="cuda", dtype=dtype)
    group = HEADS // KV_HEADS

    @torch.no_grad()
    def upstream():
        x = norm(hidden)
        k = k_proj(x).view(batch, slow_tokens, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = v_proj(x).view(batch, slow_tokens, KV_HEADS, HEAD_DIM).transpose(1, 2)
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    @torch.no_grad()
    def sdpa():
        return sdpa_gqa(q, t["slow_key"], t["slow_value"])

    def kernel():
        return kernels.cross_attention(**t, num_heads=HEADS, num_kv_heads=KV_HEADS, scale=HEAD_DIM**-0.5, out=out)

    return {"upstream": upstream, "sdpa": sdpa, "kernel": kernel}


def op_cost(batch: int, rows_per_seq: int, slow_tokens: int, elt: int) -> tuple[float, float]:
    """(bytes, flops) of the op itself: K/V read once, q read, output written; 2 matmuls."""
    rows = batch * rows_per_seq
    kv = 2 * batch * KV_HEADS * slow_tokens * HEAD_DIM * elt
    io = 2 * rows * HEADS * HEAD_DIM * elt
    flops = 4.0 * rows * HEADS * slow_tokens * HEAD_DIM
    return kv + io, flops


def run(args: argparse.Namespace) -> tuple[list[Result], dict]:
    """The results, and the measured ceilings the floors are computed from."""
    dtype = getattr(torch, args.dtype)
    bandwidth, peak = measure_ceilings(dtype)
    print(f"measured ceilings: copy {bandwidth / 1e9:.0f} GB/s, {args.dtype} matmul {peak / 1e12:.0f} TFLOP/s")
    cases = [("decode", b, 1) for b in args.decode_batch] + [("prefill", 1, r) for r in args.prefill_rows]
    results = []
    for frames in args.frames:
        slow_tokens = TOKENS_PER_FRAME * frames
        for phase, batch, rows_per_seq in cases:
            t = make_inputs(batch, rows_per_seq, slow_tokens, dtype)
            paths = build_paths(t, batch, rows_per_seq, dtype)
            nbytes, flops = op_cost(batch, rows_per_seq, slow_tokens, t["query"].element_size())
            floor = max(nbytes / bandwidth, flops / peak) * 1e6
            for name in args.paths:
                us, how = time_us(paths[name], args.iters, args.warmup, not args.no_graphs)
                results.append(Result(phase, frames, slow_tokens, batch, batch * rows_per_seq, name, us, how,
                                      nbytes / (us * 1e-6) / 1e9, flops / (us * 1e-6) / 1e12, floor,
                                      100.0 * floor / us))
            del t, paths
            torch.cuda.empty_cache()
    return results, {"bandwidth_bytes_per_s": bandwidth, "matmul_flops_per_s": peak}


def print_table(results: list[Result]) -> None:
    header = f"{'phase':8} {'frames':>6} {'tokens':>6} {'B':>3} {'rows':>5} {'path':9} {'time us':>10} " \
             f"{'GB/s':>8} {'TFLOP/s':>8} {'floor us':>9} {'% floor':>8} timing"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.phase:8} {r.frames:>6} {r.slow_tokens:>6} {r.batch:>3} {r.rows:>5} {r.path:9} {r.time_us:>10.1f} "
              f"{r.gbps:>8.0f} {r.tflops:>8.1f} {r.floor_us:>9.1f} {r.pct_of_floor:>7.0f}% {r.timing}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    from slowfast_trt.ops.cross_attention import kernel as kernels

    if "kernel" in args.paths and not kernels.is_available():
        print(f"error: slowfast_trt._kernels is not built ({kernels.build_info()})", file=sys.stderr)
        return 2
    results, ceilings = run(args)
    print_table(results)
    if args.json:
        device = torch.cuda.get_device_properties(0)
        with open(args.json, "w") as f:
            json.dump({"device": device.name, "sms": device.multi_processor_count, "dtype": args.dtype,
                       "torch": torch.__version__, **ceilings, "results": [asdict(r) for r in results]}, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if all(math.isfinite(r.time_us) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
