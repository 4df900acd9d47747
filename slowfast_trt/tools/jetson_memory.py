"""Memory and decode-speed budget of the Slow-Fast model on Jetson Orin modules.

    python -m slowfast_trt.tools.jetson_memory --manifest DIR/manifest.json   # an export folder
    python -m slowfast_trt.tools.jetson_memory --ckpt CKPT                    # a checkpoint's config
        [--max-seq-len 4096] [--vision-batch 8] [--prefill-rows N] [--with-nocross] [--json OUT]

Everything is computed from the config (parameter counts are exact for the released
checkpoints' layout, checked against the upstream parameter manifest in the tests), per
precision:

* weights: vision tower, projector (pooler), slow K/V projection, decoder (layers, final
  norm, LM head) as TensorRT engines hold them; ``int4-awq`` stores the seven projections of
  every layer as 4-bit + one fp16 scale per 128 inputs (0.516 bytes/weight) and keeps the LM
  head fp16; the vision tower stays fp16 in both. The embedding table (CPU gather from a
  memory map) is listed apart and counted in the total (unified memory).
* KV cache at ``max_seq_len`` and the slow K/V of one video at 64 and 96 frames (fp16).
* activations, an upper-bound estimate of what TensorRT reserves per execution context at the
  profiles' max shapes, summed over the engines (each context owns its activation memory):
  ConvNeXt's widest stage per frame x vision batch; the projector over all frames; the
  decoder's prefill with the attention scores and probabilities materialised in float32
  (heads x rows x (past + rows) x 4 bytes each; a fused attention kernel needs far less).
* ``decoder_nocross``'s engine would hold a second copy of the decoder weights, so on Jetson
  the decoder engine alone serves every step (``--with-nocross`` adds it to the table).

Fits: total <= the module's memory visible to Linux minus a reserve for the OS, CUDA context
and TensorRT runtime (2 GiB, an estimate: measure with ``tegrastats``). Decode ceiling:
bandwidth / bytes read per generated token (decoder weights + the full KV cache at
``max_seq_len``); real decoding reaches perhaps 60-80 % of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from slowfast_trt.cli.errors import run_cli
from slowfast_trt.tools.jetson_devices import GIB, RESERVE_BYTES  # noqa: E402

INT4_BLOCK = 128
FRAME_COUNTS = (64, 96)
# ConvNeXt-XXLarge of convnext-576 (open_clip convnext_xxlarge trunk), the only supported tower.
CONVNEXT_XXL = {"dims": (384, 768, 1536, 3072), "depths": (3, 4, 30, 3), "stem": 4}
QWEN2_TOKENIZER_LEN = 151646
DEFAULT_MAX_SEQ_LEN = 4096


from slowfast_trt.tools.jetson_devices import DEVICES, Device  # noqa: E402,F401  (re-exported)

PRECISIONS = ("fp16", "int4-awq")


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts (numbers of weights) of the parts that become engines."""

    vision: int
    projector: int
    slow_kv: int
    decoder_linear: int  # q/k/v/o/gate/up/down weights of every layer (INT4 in int4-awq)
    decoder_other: int  # biases, norms, hybrid gates, LM head
    embed: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    hybrid_layers: int
    vision_grid: int  # tokens per frame side out of the tower (18 at 576 px)
    vision_stem_side: int  # feature side after the stem (144 at 576 px)
    slow_per_frame: int  # 81


def convnext_params(dims, depths, stem: int = 4, in_ch: int = 3) -> int:
    """ConvNeXt trunk weights: stem conv + LN, per block dwconv7 + LN + 2 pointwise + gamma
    (8C^2 + 58C), LN + 2x2 conv per downsample (the classifier head is not exported)."""
    total = stem * stem * in_ch * dims[0] + dims[0] + 2 * dims[0]
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        if i:
            total += 2 * dims[i - 1] + 4 * dims[i - 1] * dim + dim
        total += depth * (8 * dim * dim + 58 * dim)
    return total


def model_sizes(config, vocab_rows: int | None = None) -> ModelSizes:
    """:class:`ModelSizes` of a :class:`~slowfast_trt.models.slowfast.config.SlowFastConfig` (convnext-576 tower)."""
    text, visual = config.text, config.visual
    h, inter, kvd = text.hidden_size, text.intermediate_size, text.num_kv_heads * text.head_dim
    rows = vocab_rows or text.vocab_size
    hybrid = len(config.cross_attn.hybrid_layers)
    linear = text.num_layers * (2 * h * h + 2 * h * kvd + 3 * h * inter)
    other = text.num_layers * (h + 2 * kvd + 2 * h) + h + hybrid * (h + 2) + rows * h  # biases, norms, gates, LM head
    mm = visual.mm_hidden_size
    projector = mm * h + h + (visual.projector_depth - 1) * (h * h + h)
    stride = 32
    grid = visual.image_size // stride
    pooled = grid // visual.video_pooling_stride
    return ModelSizes(
        vision=convnext_params(CONVNEXT_XXL["dims"], CONVNEXT_XXL["depths"]), projector=projector,
        slow_kv=hybrid * (h * 2 * kvd + 2 * kvd) + hybrid * h, decoder_linear=linear, decoder_other=other,
        embed=rows * h, hidden=h, layers=text.num_layers, heads=text.num_heads, kv_heads=text.num_kv_heads,
        head_dim=text.head_dim, intermediate=inter, hybrid_layers=hybrid, vision_grid=grid,
        vision_stem_side=visual.image_size // CONVNEXT_XXL["stem"], slow_per_frame=pooled * pooled,
    )


def decoder_weight_bytes(sizes: ModelSizes, precision: str) -> int:
    if precision == "int4-awq":
        packed = sizes.decoder_linear // 2 + 2 * (sizes.decoder_linear // INT4_BLOCK)
        return packed + 2 * sizes.decoder_other
    return 2 * (sizes.decoder_linear + sizes.decoder_other)


def kv_cache_bytes(sizes: ModelSizes, tokens: int) -> int:
    return 2 * sizes.layers * tokens * sizes.kv_heads * sizes.head_dim * 2


def slow_kv_bytes(sizes: ModelSizes, frames: int) -> int:
    return 2 * sizes.hybrid_layers * frames * sizes.slow_per_frame * sizes.kv_heads * sizes.head_dim * 2


def activation_bytes(sizes: ModelSizes, frames: int, vision_batch: int, prefill_rows: int, max_seq_len: int) -> dict:
    """Upper-bound activation memory per engine context (fp16 tensors, fp32 attention scores)."""
    c0 = CONVNEXT_XXL["dims"][0]
    side = sizes.vision_stem_side
    per_frame = side * side * c0 * 6 * 2  # block input, dwconv/LN output, 4x MLP hidden
    tokens = frames * sizes.vision_grid ** 2
    pooler = tokens * (CONVNEXT_XXL["dims"][-1] + 2 * sizes.hidden) * 2
    rows, past = prefill_rows, max_seq_len - 1
    scores = 2 * sizes.heads * rows * (past + rows) * 4
    mlp = rows * (3 * sizes.intermediate + 6 * sizes.hidden) * 2
    slow = frames * sizes.slow_per_frame
    return {
        "vision": per_frame * vision_batch,
        "pooler": pooler,
        "slow_kv": slow * (sizes.hidden * 2 + 4 * sizes.kv_heads * sizes.head_dim) * 2,
        "decoder": scores + mlp,
    }


def budget(sizes: ModelSizes, precision: str, *, fast_tokens: int, frames: int = 64,
           max_seq_len: int = DEFAULT_MAX_SEQ_LEN, vision_batch: int = 8, prefill_rows: int | None = None,
           with_nocross: bool = False) -> dict:
    """Device-independent byte counts of one precision (see the module docstring).

    ``fast_tokens``: the prompt's visual rows at ``frames``; prefill calls are sized for
    ``prefill_rows`` rows (default: fast tokens + 512 text rows) after up to
    ``max_seq_len - 1`` cached rows."""
    rows = prefill_rows or min(max_seq_len, fast_tokens + 512)
    decoder = decoder_weight_bytes(sizes, precision)
    weights = {
        "vision": 2 * sizes.vision,
        "pooler": 2 * sizes.projector,
        "slow_kv": 2 * sizes.slow_kv,
        "decoder": decoder * (2 if with_nocross else 1),
    }
    activations = activation_bytes(sizes, frames, vision_batch, rows, max_seq_len)
    parts = {
        "weights": sum(weights.values()),
        "embed_table": 2 * sizes.embed,
        "kv_cache": kv_cache_bytes(sizes, max_seq_len),
        "slow_kv_cache": slow_kv_bytes(sizes, frames),
        "activations": sum(activations.values()),
    }
    return {
        "precision": precision, "frames": frames, "max_seq_len": max_seq_len, "vision_batch": vision_batch,
        "prefill_rows": rows, "weights_by_engine": weights, "activations_by_engine": activations, **parts,
        "slow_kv_64": slow_kv_bytes(sizes, 64), "slow_kv_96": slow_kv_bytes(sizes, 96),
        "total": sum(parts.values()), "bytes_per_token": decoder + kv_cache_bytes(sizes, max_seq_len),
    }


def device_rows(sizes: ModelSizes, **kwargs) -> list[dict]:
    """One row per device and precision: the budget, whether it fits, the decode ceiling."""
    rows = []
    for device in DEVICES:
        usable = device.memory_mib * (1 << 20) - RESERVE_BYTES
        for precision in PRECISIONS:
            b = budget(sizes, precision, **kwargs)
            rows.append({
                "device": device.name, "usable_bytes": usable, **b, "fits": b["total"] <= usable,
                "decode_ceiling_tok_s": device.bandwidth_gbs * 1e9 / b["bytes_per_token"],
                "bandwidth_gbs": device.bandwidth_gbs,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    def gib(n: int) -> str:
        return f"{n / GIB:6.2f}"

    head = (f"{'device':<15} {'precision':<9} {'weights':>7} {'embed':>6} {'KV@L':>6} {'slow64':>6} {'slow96':>6} "
            f"{'activ':>6} {'total':>6} {'usable':>6} {'fits':>4} {'tok/s':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['device']:<15} {r['precision']:<9} {gib(r['weights']):>7} {gib(r['embed_table'])} {gib(r['kv_cache'])} "
            f"{gib(r['slow_kv_64'])} {gib(r['slow_kv_96'])} {gib(r['activations'])} {gib(r['total'])} "
            f"{gib(r['usable_bytes'])} {'yes' if r['fits'] else 'no':>4} {r['decode_ceiling_tok_s']:6.1f}"
        )
    return "\n".join(lines)


def _load(args):
    from slowfast_trt.models.slowfast.config import SlowFastConfig

    if args.manifest:
        try:
            manifest = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--manifest {args.manifest}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"--manifest {args.manifest}: expected a JSON object (an export folder's manifest.json)")
        config = SlowFastConfig.from_file(Path(args.manifest).parent / "config.json")
        return config, manifest.get("vocab_rows"), manifest.get("max_seq_len"), manifest.get("frames")
    directory = Path(args.ckpt)
    config = SlowFastConfig.from_file(directory / "config.json")
    rows = QWEN2_TOKENIZER_LEN if config.text.vocab_size == 152064 else None
    return config, rows, None, None


def _longvu(argv: list[str] | None) -> bool:
    """Whether ``--ckpt`` / ``--manifest`` is a LongVU model (``slowfast_trt.tools.longvu_budget`` plans those)."""
    from slowfast_trt.runtime.families import family_of_source

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--ckpt")
    p.add_argument("--manifest")
    args, _ = p.parse_known_args(argv)
    source = args.ckpt or (str(Path(args.manifest).parent) if args.manifest else None)
    family = family_of_source(source) if source else None
    return family is not None and family.name == "longvu"


def main(argv: list[str] | None = None) -> int:
    if _longvu(argv if argv is not None else sys.argv[1:]):
        from slowfast_trt.tools.longvu_budget import main as longvu_main

        return longvu_main(argv)
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.tools.jetson_memory", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="manifest.json of an export folder")
    source.add_argument("--ckpt", help="checkpoint folder (its config.json)")
    p.add_argument("--max-seq-len", type=int, default=None, help=f"KV-cache length (default: the export's, else {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--frames", type=int, default=None, help="frames per video for activations (default: the export's, else 64)")
    p.add_argument("--vision-batch", type=int, default=8, help="frames per vision engine call (default 8)")
    p.add_argument("--prefill-rows", type=int, default=None, help="max rows per prefill call (default fast tokens + 512)")
    p.add_argument("--with-nocross", action="store_true", help="also count a decoder_nocross engine (a 2nd weight copy)")
    p.add_argument("--json", help="write the rows as JSON here")
    args = p.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    from slowfast_trt.cli.checks import check_destination, write_then_print
    from slowfast_trt.models.slowfast.specs import fast_token_count

    for flag, value in (("--max-seq-len", args.max_seq_len), ("--frames", args.frames), ("--vision-batch", args.vision_batch),
                        ("--prefill-rows", args.prefill_rows)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    check_destination(args.json)
    config, vocab_rows, seq, frames = _load(args)
    sizes = model_sizes(config, vocab_rows)
    frames = args.frames or frames or config.training_frames
    rows = device_rows(sizes, fast_tokens=fast_token_count(config, frames), frames=frames, max_seq_len=args.max_seq_len or seq or DEFAULT_MAX_SEQ_LEN,
                       vision_batch=args.vision_batch, prefill_rows=args.prefill_rows, with_nocross=args.with_nocross)

    def show() -> None:
        print(format_table(rows))
        print("GiB; tok/s = decode ceiling from DRAM bandwidth (decoder weights + full KV cache read per token)", flush=True)

    write_then_print(args.json, {"sizes": asdict(sizes), "rows": rows}, show, printed="the table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
