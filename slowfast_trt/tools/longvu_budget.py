"""Compute and memory budget of LongVU per video length, and whether it fits Jetson Orin modules.

    python -m slowfast_trt.tools.longvu_budget [--ckpt LONGVU_DIR [--siglip DIR --dino DIR]]
        [--minutes 1 10 60] [--max-seq-len N] [--dino-batch 8] [--json OUT]
    python -m slowfast_trt.tools.jetson_memory --ckpt LONGVU_DIR ...   # the same (family dispatch)

Without ``--ckpt`` the sizes are those of the release (Vision-CAIR/LongVU_Qwen2_7B: Qwen2-7B,
SigLIP so400m-patch14-384, DINOv2-giant), parsed by the same config classes as a checkpoint.

Per video of ``m`` minutes at upstream's one frame per second (T = 60 m sampled frames):

* DINOv2 runs on **every** sampled frame (730 tokens, 40 layers of width 1536, SwiGLU 4096);
  SigLIP and the connector only on the K kept frames (at most 400, and at most T); the decoder
  prefills at most ``tokenizer_model_max_length - n - 16`` visual rows (budget ``a``) whatever T.
  So DINOv2's cost grows with the video and everything after it is bounded: the table gives
  each stage's TFLOP (2 x multiply-adds, attention included) and DINOv2's share.
* memory: engine weights (fp16; ``int4-awq`` packs the decoder's projections as 4 bit + one fp16
  scale per 128 inputs), the embedding table, the KV cache at ``max_seq_len``, DINOv2's
  activations for ``--dino-batch`` frames (fp32 attention scores materialised: an upper bound),
  and what a session caches per video: the DINOv2 features of every sampled frame (576 x 1536
  fp16 = 1.7 MiB a frame) and the SigLIP pixels (384 x 384 x 3 uint8) on the host.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from slowfast_trt.tools.jetson_devices import DEVICES, GIB, RESERVE_BYTES

INT4_BLOCK = 128
MAX_KEPT = 400
RELEASE = {  # the release's config.json head and its towers (hub pages); the tail as SEMANTICS.md assumes
    "model_type": "cambrian_qwen", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "max_position_embeddings": 32768, "mm_projector_type": "sva", "num_query_group": 1,
    "query_num_list": [144], "image_token_len": 144, "lowres_token": 8, "highres": True, "connector_only": True,
    "connector_depth": 3, "vision_hidden_size": 1024, "tokenizer_model_max_length": 8192, "frame_pos": False,
    "mm_vision_tower_aux_list": ["siglip/CLIP-ViT-SO400M-14-384", "facebook/dinov2-giant-res378"],
    "mm_vision_tower_aux_token_len_list": [576, 576],
}
RELEASE_SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                  "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14, "image_size": 384}
RELEASE_DINO = {"model_type": "dinov2", "hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24,
                "patch_size": 14, "image_size": 518, "use_swiglu_ffn": True, "mlp_ratio": 4}
QWEN2_TOKENIZER_LEN = 151646


@dataclass(frozen=True)
class Sizes:
    dino: int
    siglip: int
    connector: int
    decoder_linear: int
    decoder_other: int
    embed: int
    dino_flop_frame: float
    siglip_flop_frame: float
    connector_flop_frame: float
    decoder_flop_row: float  # per prefilled row, attention over the budget's rows excluded
    attention_flop_row2: float  # per (row x row) pair of the prefill (causal: half of L^2)
    kv_bytes_row: int
    dino_feature_bytes_frame: int
    siglip_pixel_bytes_frame: int
    visual_budget: int  # tokenizer_model_max_length - n - 16 for a ~26-id prompt


def _vit(tokens: int, width: int, layers: int, mlp_weights: int) -> tuple[int, float]:
    """(weights, FLOP per image) of a ViT: 4 width^2 attention projections + the MLP per layer."""
    per_layer = 4 * width * width + mlp_weights
    flop = 2 * layers * (tokens * per_layer + 2 * tokens * tokens * width)
    return layers * per_layer, float(flop)


def sizes_of(config, siglip, dino, vocab_rows: int | None = None) -> Sizes:
    """From a :class:`LongVUConfig` and both :class:`TowerConfig` s."""
    text = config.text
    h, inter, kvd = text.hidden_size, text.intermediate_size, text.num_kv_heads * text.head_dim
    grid_d, grid_s = (378 // dino.patch_size) ** 2 + 1, (384 // siglip.patch_size) ** 2
    dino_w, dino_f = _vit(grid_d, dino.hidden_size, dino.num_layers, 3 * dino.hidden_size * dino.dino_mlp_hidden
                          if dino.use_swiglu_ffn else 2 * dino.hidden_size * dino.dino_mlp_hidden)
    sig_w, sig_f = _vit(grid_s, siglip.hidden_size, siglip.num_layers, 2 * siglip.hidden_size * siglip.intermediate_size)
    dv, q, low = config.vision_hidden, config.image_token_len, config.lowres_token ** 2
    aux = (siglip.hidden_size + dino.hidden_size) * dv + 2 * dv * dv
    sampler = config.connector_depth * (10 * dv * dv)  # proj_context, proj_in (2), MLP (2), q, 2k, 2v, o
    projector = dv * h + h * h
    connector_flop = 2 * (576 * aux + q * sampler + (q + low) * projector)
    rows = vocab_rows or text.vocab_size
    linear = text.num_layers * (2 * h * h + 2 * h * kvd + 3 * h * inter)
    return Sizes(
        dino=dino_w, siglip=sig_w, connector=aux + sampler + projector, decoder_linear=linear,
        decoder_other=text.num_layers * (h + 2 * kvd + 2 * h) + h + rows * h, embed=rows * h,
        dino_flop_frame=dino_f, siglip_flop_frame=sig_f, connector_flop_frame=float(connector_flop),
        decoder_flop_row=float(2 * (linear + rows * h)), attention_flop_row2=float(2 * text.num_layers * h),
        kv_bytes_row=2 * text.num_layers * kvd * 2, dino_feature_bytes_frame=576 * dino.hidden_size * 2,
        siglip_pixel_bytes_frame=384 * 384 * 3, visual_budget=config.max_length - 26 - config.inference_max_length,
    )


def compute_rows(sizes: Sizes, minutes: list[float]) -> list[dict]:
    """TFLOP per stage for videos of ``minutes`` (one frame per second; K = min(T, 400) kept)."""
    out = []
    for m in minutes:
        frames = max(1, int(round(60 * m)))
        kept = min(frames, MAX_KEPT)
        rows = min(156 * kept, sizes.visual_budget) + 26  # high-res frames until the budget binds
        stages = {
            "dino": frames * sizes.dino_flop_frame, "siglip": kept * sizes.siglip_flop_frame,
            "connector": kept * sizes.connector_flop_frame,
            "prefill": rows * sizes.decoder_flop_row + rows * rows * sizes.attention_flop_row2,
        }
        total = sum(stages.values())
        out.append({"minutes": m, "frames": frames, "kept_max": kept, **{f"{k}_tflop": v / 1e12 for k, v in stages.items()},
                    "dino_share": stages["dino"] / total, "dino_features_gib": frames * sizes.dino_feature_bytes_frame / GIB,
                    "siglip_pixels_gib": frames * sizes.siglip_pixel_bytes_frame / GIB})
    return out


def memory_rows(sizes: Sizes, max_seq_len: int, dino_batch: int, minutes: float, dino_heads: int = 24,
                dino_tokens: int = 730, dino_mlp: int = 4096) -> list[dict]:
    dino_act = dino_batch * (dino_heads * dino_tokens * dino_tokens * 4 + dino_tokens * 2 * dino_mlp * 2 * 2)
    cached = int(60 * minutes) * sizes.dino_feature_bytes_frame
    rows = []
    for precision in ("fp16", "int4-awq"):
        decoder = (sizes.decoder_linear // 2 + 2 * (sizes.decoder_linear // INT4_BLOCK) + 2 * sizes.decoder_other
                   if precision == "int4-awq" else 2 * (sizes.decoder_linear + sizes.decoder_other))
        parts = {"dino": 2 * sizes.dino, "siglip": 2 * sizes.siglip, "connector": 2 * sizes.connector,
                 "decoder": decoder, "embed_table": 2 * sizes.embed, "kv_cache": max_seq_len * sizes.kv_bytes_row,
                 "dino_activations": dino_act, "dino_features_cached": cached}
        total = sum(parts.values())
        for device in DEVICES:
            usable = device.memory_mib * (1 << 20) - RESERVE_BYTES
            rows.append({"device": device.name, "precision": precision, **parts, "total": total, "usable": usable,
                         "fits": total <= usable, "decode_ceiling_tok_s":
                         device.bandwidth_gbs * 1e9 / (decoder + max_seq_len * sizes.kv_bytes_row)})
    return rows


def format_tables(compute: list[dict], memory: list[dict]) -> str:
    lines = [f"{'minutes':>7} {'frames':>6} {'DINOv2':>8} {'SigLIP':>7} {'connect':>7} {'prefill':>7} "
             f"{'DINO %':>6} {'DINO feats':>10}   (TFLOP; GiB)"]
    for r in compute:
        lines.append(f"{r['minutes']:>7g} {r['frames']:>6} {r['dino_tflop']:>8.1f} {r['siglip_tflop']:>7.1f} "
                     f"{r['connector_tflop']:>7.2f} {r['prefill_tflop']:>7.1f} {100 * r['dino_share']:>5.1f}% "
                     f"{r['dino_features_gib']:>10.2f}")
    lines += ["", f"{'device':<15} {'precision':<9} {'DINO':>5} {'SigLIP':>6} {'decoder':>7} {'embed':>5} {'KV':>5} "
              f"{'DINOact':>7} {'feats':>5} {'total':>6} {'usable':>6} {'fits':>4} {'tok/s':>6}"]
    for r in memory:
        g = lambda key: r[key] / GIB  # noqa: E731
        lines.append(f"{r['device']:<15} {r['precision']:<9} {g('dino'):>5.2f} {g('siglip'):>6.2f} {g('decoder'):>7.2f} "
                     f"{g('embed_table'):>5.2f} {g('kv_cache'):>5.2f} {g('dino_activations'):>7.2f} "
                     f"{g('dino_features_cached'):>5.2f} {g('total'):>6.2f} {g('usable'):>6.2f} "
                     f"{'yes' if r['fits'] else 'no':>4} {r['decode_ceiling_tok_s']:>6.1f}")
    return "\n".join(lines)


def _configs(args):
    from slowfast_trt.models.longvu.config import LongVUConfig, TowerConfig

    if not args.ckpt:
        return (LongVUConfig.from_dict(RELEASE, "release"), TowerConfig.from_dict(RELEASE_SIGLIP, "siglip", "release"),
                TowerConfig.from_dict(RELEASE_DINO, "dinov2", "release"), QWEN2_TOKENIZER_LEN)
    from slowfast_trt.models.longvu.checkpoint import resolve_folders
    from slowfast_trt.models.qwen2.config import read_config_json

    root = Path(args.ckpt)
    if (root / "manifest.json").is_file():
        manifest = read_config_json(root / "manifest.json")
        towers = manifest.get("towers") or {}
        config = LongVUConfig.from_file(root / "config.json")
        siglip, dino = (TowerConfig(**towers[k]) for k in ("siglip", "dino"))
        return config, siglip, dino, manifest.get("vocab_rows")
    folders = resolve_folders(args.ckpt, args.siglip, args.dino)
    config = LongVUConfig.from_file(folders.checkpoint / "config.json")
    return (config, TowerConfig.from_file(folders.siglip / "config.json", "siglip"),
            TowerConfig.from_file(folders.dino / "config.json", "dinov2"), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.tools.longvu_budget", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="LongVU checkpoint or export folder (default: the release's sizes)")
    p.add_argument("--manifest", help="an export's manifest.json (its folder is read)")
    p.add_argument("--siglip", help="SigLIP tower folder (default: the hub id in the HF cache)")
    p.add_argument("--dino", help="DINOv2 tower folder (default: the hub id in the HF cache)")
    p.add_argument("--minutes", type=float, nargs="+", default=[0.5, 2, 10, 60])
    p.add_argument("--max-seq-len", type=int, default=None, help="KV length (default L + 1024)")
    p.add_argument("--dino-batch", type=int, default=8, help="frames per DINOv2 call (default 8)")
    p.add_argument("--memory-minutes", type=float, default=10, help="video length for the cached features (default 10)")
    p.add_argument("--json")
    p.add_argument("--vision-batch", type=int, default=None, help=argparse.SUPPRESS)  # jetson_memory's options
    p.add_argument("--prefill-rows", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--with-nocross", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.manifest:
        args.ckpt = str(Path(args.manifest).parent)
    try:
        config, siglip, dino, rows = _configs(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizes = sizes_of(config, siglip, dino, rows)
    length = args.max_seq_len or min(config.text.max_position_embeddings, config.max_length + 1024)
    compute = compute_rows(sizes, args.minutes)
    memory = memory_rows(sizes, length, args.vision_batch or args.dino_batch, args.memory_minutes,
                         dino.num_heads, (378 // dino.patch_size) ** 2 + 1, dino.dino_mlp_hidden)
    print(format_tables(compute, memory))
    print(f"one frame per second; DINOv2 on every frame, SigLIP + connector on <= {MAX_KEPT} kept, prefill of the "
          f"{sizes.visual_budget}-row budget; memory with the DINOv2 features of {args.memory_minutes:g} min cached")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": asdict(sizes), "compute": compute, "memory": memory},
                                              indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
