"""AWQ-style activation-aware scales for the INT4 weight-only decoder (Lin et al., 2023).

For a group of Linears that read the same input ``x`` (q/k/v; gate/up; down), AWQ searches a
per-input-channel scale ``s = mean|x|^alpha / sqrt(max * min)`` over a grid of ``alpha`` in
[0, 1) that minimises ``|| x W^T - (x / s) Q(W s)^T ||^2`` on calibration activations, where
``Q`` is the blockwise INT4 quantize-dequantize of :mod:`slowfast_trt.export.quantize_int4`.
``alpha = 0`` gives ``s = 1``: plain round-to-nearest is always a candidate, so the search
never does worse than RTN on the calibration data. The loss is taken on the group's own
outputs (upstream AWQ measures the whole attention / MLP block output; this is cheaper and
needs no block re-execution).

The scales are then folded where that is mathematically exact, as AWQ does:

| group           | input ``x``                 | ``1 / s`` folded into                         | ``s`` into (columns)          |
|-----------------|-----------------------------|-----------------------------------------------|-------------------------------|
| q, k, v         | ``input_layernorm(h)``      | ``input_layernorm.weight``                    | q, k, v (and, in hybrid layers, ``cross_attn_kv_proj``, which reads the same norm of the slow tokens) |
| gate, up        | ``post_attention_layernorm``| ``post_attention_layernorm.weight``           | gate, up                      |
| down            | ``silu(gate) * up``         | ``up_proj`` rows (the product is linear in up)| down                          |
| o_proj          | attention output            | not folded (GQA: ``v_proj`` rows are shared by 7 query heads, and the hybrid layers add the gated cross-attention before ``o_proj``) | plain RTN |

Calibration: a few chat prompts (no video; the cross-attention branch is then inactive) run
through the PyTorch decoder, with forward pre-hooks recording each group's input.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from slowfast_trt.export.quantize_int4 import DEFAULT_BLOCK, block_size_for, fake_quantize_linear

GRID = 20
MAX_TOKENS = 512
DEFAULT_PROMPTS = (
    "Describe what happens in the video, step by step.",
    "How many people appear in the video, and what are they wearing?",
    "What is the main object on the table, and what happens to it at the end?",
    "Summarize the video in one sentence. Then list three details a viewer might miss.",
    "Is the camera moving or static? Explain how you can tell from the scene.",
    "Write a short caption for this clip, then translate it into French and German.",
)
GROUPS = ("qkv", "mlp", "down")


def calibration_ids(tokenizer, prompts: Iterable[str] = DEFAULT_PROMPTS) -> list[list[int]]:
    """Token ids of each prompt in the model's chat template (no video)."""
    from slowfast_trt.prompt import Conversation, tokenize_prompt

    out = []
    for text in prompts:
        conversation = Conversation(has_video=False)
        conversation.add_question(text)
        out.append(list(tokenize_prompt(tokenizer, conversation.prompt_text()).ids))
    return out


def _group_modules(layer: nn.Module) -> dict[str, tuple[nn.Module, list[nn.Linear]]]:
    """Group name -> (module whose input is recorded, Linears that read that input)."""
    return {
        "qkv": (layer.q_proj, [layer.q_proj, layer.k_proj, layer.v_proj]),
        "mlp": (layer.mlp.gate_proj, [layer.mlp.gate_proj, layer.mlp.up_proj]),
        "down": (layer.mlp.down_proj, [layer.mlp.down_proj]),
    }


@torch.no_grad()
def capture_inputs(model, ids: Sequence[Sequence[int]], max_tokens: int = MAX_TOKENS) -> dict[int, dict[str, torch.Tensor]]:
    """Run each id list through the decoder; per layer and group, the float32 input rows
    (at most ``max_tokens``, evenly spaced over all prompts)."""
    decoder = model.decoder
    records: dict[int, dict[str, list[torch.Tensor]]] = {i: {g: [] for g in GROUPS} for i in range(len(decoder.layers))}
    handles = []
    for i, layer in enumerate(decoder.layers):
        for group, (module, _) in _group_modules(layer).items():
            def hook(_module, args, i=i, group=group):
                records[i][group].append(args[0].reshape(-1, args[0].shape[-1]).detach().to(torch.float32))
            handles.append(module.register_forward_pre_hook(hook))
    try:
        for seq in ids:
            if not seq:
                continue
            tokens = torch.tensor([list(seq)], dtype=torch.long, device=model.device)
            positions = torch.arange(tokens.shape[1], device=model.device)[None]
            keys, values = model.empty_cache()
            decoder(model.embed_tokens(tokens), positions, keys, values)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for i, groups in records.items():
        out[i] = {}
        for group, rows in groups.items():
            if not rows:
                raise ValueError("calibration produced no activations (empty prompts?)")
            x = torch.cat(rows)
            if x.shape[0] > max_tokens:
                x = x[torch.linspace(0, x.shape[0] - 1, max_tokens).round().long()]
            out[i][group] = x
    return out


def awq_scale_candidates(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's scale for one ``alpha``: ``mean|x|^alpha``, normalised so max * min = 1."""
    s = x_mean.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: Sequence[torch.Tensor], block: int, grid: int = GRID) -> dict:
    """Best per-input-channel scale for Linears ``weights`` ([N_i, K]) reading ``x`` ([T, K]).

    Returns ``scale`` (float32 [K]), ``alpha``, and the output MSE of RTN (alpha 0) and of
    the chosen scale.
    """
    x = x.to(torch.float32)
    ws = [w.detach().to(torch.float32) for w in weights]
    reference = torch.cat([x @ w.t() for w in ws], dim=-1)
    x_mean = x.abs().mean(dim=0)
    best = None
    for step in range(grid):
        alpha = step / grid
        s = awq_scale_candidates(x_mean, alpha)
        xs = x / s
        out = torch.cat([xs @ fake_quantize_linear(w * s, block).t() for w in ws], dim=-1)
        loss = float((out - reference).pow(2).mean())
        if step == 0:
            rtn = loss
        if best is None or loss < best[0]:
            best = (loss, alpha, s)
    loss, alpha, s = best
    return {"scale": s, "alpha": alpha, "loss_rtn": rtn, "loss_awq": loss}


@torch.no_grad()
def _mul_(param: torch.Tensor, factor: torch.Tensor) -> None:
    """``param *= factor`` computed in float32 (broadcast), stored in ``param``'s dtype."""
    param.copy_(param.to(torch.float32) * factor)


@torch.no_grad()
def fold_scales(layer: nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Fold per-input-channel ``scales`` (group -> [K]) into ``layer`` in place (table above).

    The float model computes the same function afterwards (up to rounding); only the
    weights that will be quantized carry the scales.
    """
    s = scales.get("qkv")
    if s is not None:
        _mul_(layer.input_layernorm.weight, 1.0 / s)
        for linear in (layer.q_proj, layer.k_proj, layer.v_proj):
            _mul_(linear.weight, s[None, :])
        if getattr(layer, "cross", None) is not None:
            _mul_(layer.cross.kv_proj.weight, s[None, :])  # slow tokens use the same norm
    s = scales.get("mlp")
    if s is not None:
        _mul_(layer.post_attention_layernorm.weight, 1.0 / s)
        for linear in (layer.mlp.gate_proj, layer.mlp.up_proj):
            _mul_(linear.weight, s[None, :])
    s = scales.get("down")
    if s is not None:
        _mul_(layer.mlp.up_proj.weight, 1.0 / s[:, None])
        if layer.mlp.up_proj.bias is not None:
            _mul_(layer.mlp.up_proj.bias, 1.0 / s)
        _mul_(layer.mlp.down_proj.weight, s[None, :])


def apply_awq(
    model,
    tokenizer=None,
    calibration: Iterable[str] | Iterable[Sequence[int]] | None = None,
    block: int = DEFAULT_BLOCK,
    grid: int = GRID,
    max_tokens: int = MAX_TOKENS,
) -> dict:
    """Search AWQ scales on ``calibration`` and fold them into ``model`` in place.

    ``calibration``: prompt strings (needs ``tokenizer``) or token-id lists; ``None`` uses
    :data:`DEFAULT_PROMPTS` when a tokenizer is given. Without either, nothing is changed and
    the report says round-to-nearest. Returns a JSON-able report (alpha and losses per layer
    and group).
    """
    items = list(calibration) if calibration is not None else None
    if items is None and tokenizer is None:
        return {"method": "rtn", "reason": "no calibration prompts and no tokenizer: round-to-nearest"}
    if items is None or (items and isinstance(items[0], str)):
        if tokenizer is None:
            raise ValueError("calibration prompts given as text need a tokenizer")
        ids = calibration_ids(tokenizer, items if items is not None else DEFAULT_PROMPTS)
    else:
        ids = [list(map(int, seq)) for seq in items]
    inputs = capture_inputs(model, ids, max_tokens)
    layers = []
    for i, layer in enumerate(model.decoder.layers):
        found, entry = {}, {"layer": i}
        for group, (_, linears) in _group_modules(layer).items():
            x = inputs[i][group]
            result = search_scale(x, [lin.weight for lin in linears], block_size_for(x.shape[-1], block), grid)
            found[group] = result["scale"]
            entry[group] = {k: result[k] for k in ("alpha", "loss_rtn", "loss_awq")}
        fold_scales(layer, found)
        layers.append(entry)
        del inputs[i]
    return {"method": "awq", "grid": grid, "prompts": len(ids), "tokens": sum(len(s) for s in ids), "layers": layers}
