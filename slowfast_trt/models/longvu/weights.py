"""The rename tables from upstream tensor names to ours: the LongVU checkpoint and both towers.

Each rule is (upstream regex, our name template). Every tensor of a file must match exactly one
rule of its table; a rule mapping to ``None`` is a tensor upstream stores but never uses at
inference. Shapes are checked per key (:func:`plan_mapping`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = ["DINO_RULES", "LONGVU_RULES", "MappingReport", "SIGLIP_RULES", "plan_mapping"]

_L = r"model\.layers\.(\d+)\."
LONGVU_RULES: tuple[tuple[str, str | None], ...] = (
    (r"model\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"lm_head\.weight", "decoder.lm_head.weight"),
    (r"model\.norm\.weight", "decoder.norm.weight"),
    (_L + r"self_attn\.([qkvo])_proj\.(weight|bias)", r"decoder.layers.\1.\2_proj.\3"),
    (_L + r"mlp\.(gate|up|down)_proj\.weight", r"decoder.layers.\1.mlp.\2_proj.weight"),
    (_L + r"(input_layernorm|post_attention_layernorm)\.weight", r"decoder.layers.\1.\2.weight"),
    (r"model\.mm_projector_aux_([01])\.([023])\.(weight|bias)", r"connector.aux_\1.\2.\3"),
    (r"model\.vision_sampler_0\.layers\.(\d+)\.(.+)", r"connector.sampler.layers.\1.\2"),
    (r"model\.mm_projector\.([02])\.(weight|bias)", r"connector.projector.\1.\2"),
    (r"model\.vision_query", "connector.vision_query"),
    (r"model\.image_newline", "connector.image_newline"),
)

_S = r"vision_model\.encoder\.layers\.(\d+)\."
SIGLIP_RULES: tuple[tuple[str, str | None], ...] = (
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"siglip.patch_embedding.\1"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "siglip.position_embedding"),
    (_S + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)", r"siglip.layers.\1.self_attn.\2.\3"),
    (_S + r"(layer_norm1|layer_norm2)\.(weight|bias)", r"siglip.layers.\1.\2.\3"),
    (_S + r"mlp\.(fc1|fc2)\.(weight|bias)", r"siglip.layers.\1.\2.\3"),
    # hidden_states[-1] is taken before post_layernorm; the pooling head's output is unused.
    (r"vision_model\.(post_layernorm|head)\..+", None),
    # A full SiglipModel (what the hub id holds): upstream loads only its vision part.
    (r"(text_model\..+|logit_scale|logit_bias)", None),
)

_D = r"(?:dinov2\.)?encoder\.layer\.(\d+)\."
DINO_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(?:dinov2\.)?embeddings\.cls_token", "dino.cls_token"),
    (r"(?:dinov2\.)?embeddings\.mask_token", None),  # masked image modelling only
    (r"(?:dinov2\.)?embeddings\.position_embeddings", "dino.position_embeddings"),
    (r"(?:dinov2\.)?embeddings\.patch_embeddings\.projection\.(weight|bias)", r"dino.patch_embedding.\1"),
    (_D + r"norm([12])\.(weight|bias)", r"dino.layers.\1.norm\2.\3"),
    (_D + r"attention\.attention\.(query|key|value)\.(weight|bias)", r"dino.layers.\1.attention.\2.\3"),
    (_D + r"attention\.output\.dense\.(weight|bias)", r"dino.layers.\1.attention.dense.\2"),
    (_D + r"layer_scale([12])\.lambda1", r"dino.layers.\1.layer_scale\2"),
    (_D + r"mlp\.(weights_in|weights_out|fc1|fc2)\.(weight|bias)", r"dino.layers.\1.\2.\3"),
    (r"(?:dinov2\.)?layernorm\.(weight|bias)", r"dino.layernorm.\1"),
)


def _compile(rules):
    return tuple((re.compile(pattern + r"$"), target) for pattern, target in rules)


_COMPILED: dict[int, tuple] = {}


def rename(rules, upstream_name: str) -> tuple[bool, str | None]:
    """(matched, our name or None for an ignored tensor) under ``rules``."""
    compiled = _COMPILED.setdefault(id(rules), _compile(rules))
    for pattern, target in compiled:
        match = pattern.match(upstream_name)
        if match:
            return True, (match.expand(target) if target is not None else None)
    return False, None


@dataclass
class MappingReport:
    """Result of matching a file's tensors against a model's parameters."""

    mapping: dict[str, str] = field(default_factory=dict)  # upstream -> ours
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.mis_shaped)

    def error_message(self, source: str, what: str, limit: int = 6) -> str:
        parts = []
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected), ("mis-shaped", self.mis_shaped)):
            if names:
                shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
                parts.append(f"{label} tensors: {shown}")
        return f"{source}: {what} does not match the model: " + "; ".join(parts)


def plan_mapping(
    rules,
    checkpoint_shapes: Mapping[str, Sequence[int]],
    model_shapes: Mapping[str, Sequence[int]],
    row_overrides: Mapping[str, int] | None = None,
) -> MappingReport:
    """Match a file's names/shapes to our parameters (only those ``rules`` can produce).

    ``row_overrides``: our name -> leading rows kept (the vocabulary resize to the tokenizer
    length); the file may have more rows.
    """
    report = MappingReport()
    row_overrides = row_overrides or {}
    seen: set[str] = set()
    for name, shape in checkpoint_shapes.items():
        matched, ours = rename(rules, name)
        if not matched or (ours is not None and ours not in model_shapes):
            report.unexpected.append(name)
            continue
        if ours is None:
            report.ignored.append(name)
            continue
        expected, got = tuple(model_shapes[ours]), tuple(shape)
        rows = row_overrides.get(ours)
        if not (got == expected or (rows is not None and got[1:] == expected[1:] and got[0] >= expected[0])):
            report.mis_shaped.append(f"{name} {list(got)} (expected {list(expected)})")
        report.mapping[name] = ours
        seen.add(ours)
    report.missing = sorted(set(model_shapes) - seen)
    return report
