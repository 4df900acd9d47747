"""Accuracy of the INT4 weight-only decoder against float32, in ONNX Runtime on CPU.

    python -m slowfast_trt.tools.bench_int4_accuracy [--models tiny sized] [--layers 2]
        [--frames 8] [--tokens 32] [--grid 20] [--workdir DIR] [--json OUT] [--keep]

Models: ``tiny`` (the generated test checkpoint: hidden 64, 4 layers, 2 hybrid) and ``sized``
(random weights with Qwen2-7B widths: hidden 3584, intermediate 18944, 28/4 heads, vocab
151,646 rows, ``--layers`` layers, layer 0 hybrid; ~3 GB checkpoint, ~12 GB peak memory).

For each model, a random ``--frames``-frame video and three questions (not the AWQ
calibration prompts) become prompts; the float32 decoders, an RTN INT4 copy and an AWQ INT4
export (AWQ calibrated on the default prompts) run the same prefill (``decoder.onnx``, text
rows attending to the slow K/V) and ``--tokens`` greedy decode steps (``decoder_nocross``,
upstream decode mode). Reported per variant:

* teacher-forced (the INT4 graph fed the float32 greedy tokens): logit cosine, mean and min
  over all steps and prompts, top-1 agreement (share of steps whose argmax matches) and the
  share of steps where float32's choice is among the INT4 top 5;
* free-running greedy: share of generated tokens equal to float32's, and the mean length of
  the identical prefix.

INT4 variants run with ONNX Runtime's ``MatMulNBits`` at accuracy level 1 (float32
activations: the weight-only error alone, as TensorRT's half-precision GEMMs see it) and at
the default level 4 (activations quantized to int8 by ONNX Runtime, not by our graph).
Random-weight models have no trained structure: their logits are flat and greedy choices
fragile (and greedy repeats tokens, so steps are not independent samples): the cosine is
the primary number. ``--outliers N`` refolds N channels per norm into 20x activations and
1/20 weight columns (exactly, see :func:`inject_outliers`), the structure of trained LLMs
that AWQ targets and a random model lacks.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from slowfast_trt.cli.errors import run_cli
from slowfast_trt.models.slowfast import specs as S

QUESTIONS = (
    "What is the person in the video doing?",
    "Describe the colors and the lighting of the scene.",
    "What changes between the beginning and the end of the clip?",
)
VARIANTS = (("rtn", "1"), ("awq", "1"), ("rtn", "4"), ("awq", "4"))


def _session(path: Path, accuracy_level: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if accuracy_level:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", accuracy_level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def make_checkpoint(kind: str, directory: Path, layers: int) -> Path:
    if kind == "tiny":
        from slowfast_trt.fixtures.tiny_checkpoint import write_tiny_checkpoint

        return write_tiny_checkpoint(directory)
    from slowfast_trt.fixtures.sized_checkpoint import SizedSpec, write_sized_checkpoint

    return write_sized_checkpoint(directory, SizedSpec(layers=layers))


@torch.no_grad()
def prompt_inputs(gen, frames: int) -> dict:
    """Float32 prefill inputs of each question about one random video, and the embedding table."""
    from slowfast_trt.prompt import Conversation
    from slowfast_trt.models.slowfast.sequence import (
        SequenceLayout,
        attend_to_rows,
        merge_embeddings,
        prefill_attend_mask,
    )

    model = gen.model
    rng = np.random.default_rng(0)
    video = gen.encode_video(rng.integers(0, 256, (frames, 96, 96, 3), dtype=np.uint8))
    prompts = []
    for question in QUESTIONS:
        conversation = Conversation(has_video=True)
        conversation.add_question(question)
        tokens = gen.prompt_for(conversation)
        layout = SequenceLayout.of(tokens, int(video.visual.fast.shape[0]))
        rows, offsets = attend_to_rows(prefill_attend_mask(layout, model.config.cross_attn, True))
        prompts.append({"embeds": merge_embeddings(model.embed_tokens, tokens, video.visual.fast)[None].numpy(),
                        "rows": rows.numpy(), "offsets": offsets.numpy(), "length": layout.length})
    slow = {}
    for j, (k, v) in enumerate(zip(video.slow_kv.keys, video.slow_kv.values)):
        slow[f"slow_key_{j}"], slow[f"slow_value_{j}"] = k.numpy(), v.numpy()
    slow["slow_lengths"] = video.slow_kv.lengths.numpy()
    return {"prompts": prompts, "slow": slow, "table": model.embed_tokens.weight.detach().numpy().copy(),
            "layers": model.config.text.num_layers, "kv": (model.config.text.num_kv_heads, model.config.text.head_dim)}


def _empty_cache(inputs) -> dict:
    heads, dim = inputs["kv"]
    empty = np.zeros((1, 0, heads, dim), np.float32)
    return {f"past_{kind}_{i}": empty for i in range(inputs["layers"]) for kind in ("key", "value")}


def _append(cache: dict, outputs: dict) -> dict:
    return {name: np.concatenate([cache[name], outputs[name.replace("past_", "new_")]], axis=1) for name in cache}


def run_prompt(sessions, inputs, prompt, tokens: int, forced: list[int] | None = None):
    """Prefill + ``tokens`` greedy steps; returns (logits per step, chosen tokens).

    With ``forced``, step i feeds ``forced[i]`` instead of this model's own choice."""
    decoder, nocross = sessions
    length = prompt["length"]
    feeds = {"inputs_embeds": prompt["embeds"], "position_ids": np.arange(length)[None],
             "past_length": np.array([0]), **_empty_cache(inputs),
             **inputs["slow"], "cross_rows": prompt["rows"], "cross_row_offsets": prompt["offsets"]}
    names = [o.name for o in decoder.get_outputs()]
    outputs = dict(zip(names, decoder.run(names, feeds)))
    cache, all_logits, chosen = _append(_empty_cache(inputs), outputs), [], []
    nocross_names = [o.name for o in nocross.get_outputs()]
    for step in range(tokens):
        logits = outputs["logits"][0]
        all_logits.append(logits)
        chosen.append(int(np.argmax(logits)))
        token = forced[step] if forced is not None else chosen[-1]
        feeds = {"inputs_embeds": inputs["table"][token][None, None], "position_ids": np.array([[length + step]]),
                 "past_length": np.array([length + step]), **cache}
        outputs = dict(zip(nocross_names, nocross.run(nocross_names, feeds)))
        cache = _append(cache, outputs)
    return np.stack(all_logits), chosen


def compare(reference, sessions, inputs, tokens: int) -> dict:
    cosines, top1, top5, same, prefix = [], [], [], [], []
    for prompt, (ref_logits, ref_tokens) in zip(inputs["prompts"], reference):
        logits, chosen = run_prompt(sessions, inputs, prompt, tokens, forced=ref_tokens)
        num = (logits * ref_logits).sum(-1)
        cosines += list(num / np.linalg.norm(logits, axis=-1) / np.linalg.norm(ref_logits, axis=-1))
        top1 += [a == b for a, b in zip(chosen, ref_tokens)]
        best5 = np.argpartition(-logits, 5, axis=-1)[:, :5]
        top5 += [ref in row for ref, row in zip(ref_tokens, best5.tolist())]
        _, free = run_prompt(sessions, inputs, prompt, tokens)
        same += [a == b for a, b in zip(free, ref_tokens)]
        prefix.append(next((i for i, (a, b) in enumerate(zip(free, ref_tokens)) if a != b), tokens))
    return {"cosine_mean": float(np.mean(cosines)), "cosine_min": float(np.min(cosines)),
            "top1_teacher_forced": float(np.mean(top1)), "ref_in_top5": float(np.mean(top5)), "greedy_same": float(np.mean(same)),
            "greedy_prefix_mean": float(np.mean(prefix)), "steps": len(cosines)}


@torch.no_grad()
def inject_outliers(model, channels: int, factor: float = 20.0, seed: int = 0) -> None:
    """Give ``channels`` random input channels of every norm-fed group ``factor``x larger
    activations and ``1/factor`` smaller weight columns (an exact refolding, like the large
    RMSNorm weights of trained LLMs): the function is unchanged, RTN's job gets harder."""
    from slowfast_trt.export.awq import fold_scales

    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.text.hidden_size
    for layer in model.decoder.layers:
        scales = {}
        for group in ("qkv", "mlp"):
            s = torch.ones(hidden)
            s[torch.randperm(hidden, generator=gen)[:channels]] = 1.0 / factor
            scales[group] = s
        fold_scales(layer, scales)


def export_variants(ckpt: Path, work: Path, frames: int, max_seq_len: int, grid: int, log,
                    outliers: int = 0) -> tuple[dict, dict]:
    """fp32 / rtn / awq decoder folders; returns (folders, prompt inputs + AWQ report)."""
    from slowfast_trt.models.slowfast.reference import ReferenceGenerator
    from slowfast_trt.export.awq import apply_awq
    from slowfast_trt.export.quantize_int4 import quantize_decoder_onnx
    from slowfast_trt.export.subgraphs import export_decoder

    gen = ReferenceGenerator.load(ckpt, dtype="float32")
    if outliers:
        inject_outliers(gen.model, outliers)
    inputs = prompt_inputs(gen, frames)
    folders = {name: work / name for name in ("fp32", "rtn", "awq")}
    for cross in (True, False):
        export_decoder(gen.model, folders["fp32"], "float32", frames, max_seq_len, cross=cross)
    log("AWQ search")
    start = time.perf_counter()
    inputs["awq"] = apply_awq(gen.model, tokenizer=gen.tokenizer, grid=grid)  # folds in place: after the fp32 export
    inputs["awq_seconds"] = time.perf_counter() - start
    for cross in (True, False):
        export_decoder(gen.model, folders["awq"], "float32", frames, max_seq_len, cross=cross)
    del gen
    gc.collect()
    shutil.copytree(folders["fp32"], folders["rtn"])
    for name in ("rtn", "awq"):
        log(f"INT4 rewrite: {name}")
        inputs[f"{name}_report"] = quantize_decoder_onnx(folders[name]).to_json()
    return folders, inputs


def bench_model(kind: str, work: Path, args, log) -> list[dict]:
    ckpt = make_checkpoint(kind, work / "ckpt", args.layers)
    folders, inputs = export_variants(ckpt, work, args.frames, args.max_seq_len, args.grid, log, args.outliers)
    shutil.rmtree(work / "ckpt", ignore_errors=True)
    names = (f"{S.DECODER}.onnx", f"{S.DECODER_NOCROSS}.onnx")
    log("float32 reference")
    sessions = tuple(_session(folders["fp32"] / n) for n in names)
    reference = [run_prompt(sessions, inputs, p, args.tokens) for p in inputs["prompts"]]
    del sessions
    rows = []
    for variant, level in VARIANTS:
        log(f"{variant} (accuracy level {level})")
        sessions = tuple(_session(folders[variant] / n, level) for n in names)
        report = inputs[f"{variant}_report"]
        rows.append({"model": kind + (f"+{args.outliers}o" if args.outliers else ""), "variant": f"int4-{variant}", "ort_accuracy_level": int(level),
                     **compare(reference, sessions, inputs, args.tokens),
                     "decoder_bytes_fp32": report["bytes_before"], "decoder_bytes_int4": report["bytes_after"],
                     "blocks": sorted({q["block"] for q in report["quantized"]})})
        del sessions
        gc.collect()
    rows[0]["awq"] = {"seconds": round(inputs["awq_seconds"], 1),
                      "alphas": [{g: layer[g]["alpha"] for g in ("qkv", "mlp", "down")} for layer in inputs["awq"]["layers"]],
                      "loss_ratio": [{g: layer[g]["loss_awq"] / max(layer[g]["loss_rtn"], 1e-30) for g in ("qkv", "mlp", "down")}
                                     for layer in inputs["awq"]["layers"]]}
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<9} {'variant':<9} {'ORT acc':>7} {'cos mean':>9} {'cos min':>8} {'top1 TF':>8} {'in top5':>8} {'greedy =':>9} {'prefix':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<9} {r['variant']:<9} {r['ort_accuracy_level']:>7} {r['cosine_mean']:9.5f} "
                     f"{r['cosine_min']:8.5f} {r['top1_teacher_forced']:8.3f} {r['ref_in_top5']:8.3f} {r['greedy_same']:9.3f} {r['greedy_prefix_mean']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slowfast_trt.tools.bench_int4_accuracy", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=("tiny", "sized"), default=["tiny", "sized"])
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the sized model (layer 0 hybrid)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32, help="greedy decode steps per prompt")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--grid", type=int, default=20, help="AWQ alpha grid points")
    p.add_argument("--outliers", type=int, default=0,
                   help="give N input channels per norm 20x activations (function-preserving, see inject_outliers)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[bench {time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_int4_"))
    rows = []
    try:
        for kind in args.models:
            log(f"model {kind}")
            rows += bench_model(kind, root / kind, args, log)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
