"""The one rename table from upstream checkpoint tensor names to our module parameter names.

Each rule is (upstream regex, our name template). Every upstream tensor must match exactly one
rule; rules mapping to ``None`` are tensors upstream stores but never uses at inference (the
ConvNeXt classifier head). Shapes are checked per key by the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

_VT = r"model\.vision_tower\.vision_tower\."

RENAME_RULES: tuple[tuple[str, str | None], ...] = (
    (r"model\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"model\.norm\.weight", "decoder.norm.weight"),
    (r"lm_head\.weight", "decoder.lm_head.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", r"decoder.layers.\1.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.self_attn\.cross_attn_kv_proj\.(weight|bias)", r"decoder.layers.\1.cross.kv_proj.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.cross_attn_gate_proj\.0\.(weight|bias)", r"decoder.layers.\1.cross.gate_proj.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.cross_attn_warm_up_gate", r"decoder.layers.\1.cross.warmup_gate"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"decoder.layers.\1.mlp.\2_proj.weight"),
    (r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight", r"decoder.layers.\1.\2.weight"),
    (r"model\.mm_projector\.(\d+)\.(weight|bias)", r"projector.\1.\2"),
    (r"model\.mm_projector\.(weight|bias)", r"projector.0.\1"),  # 'linear' projector is a bare Linear
    (_VT + r"stem\.0\.(weight|bias)", r"vision.stem_conv.\1"),
    (_VT + r"stem\.1\.(weight|bias)", r"vision.stem_norm.\1"),
    (_VT + r"stages\.(\d+)\.downsample\.0\.(weight|bias)", r"vision.stages.\1.downsample_norm.\2"),
    (_VT + r"stages\.(\d+)\.downsample\.1\.(weight|bias)", r"vision.stages.\1.downsample_conv.\2"),
    (_VT + r"stages\.(\d+)\.blocks\.(\d+)\.weight", r"vision.stages.\1.blocks.\2.layer_scale"),
    (_VT + r"stages\.(\d+)\.blocks\.(\d+)\.gamma", r"vision.stages.\1.blocks.\2.layer_scale"),
    (_VT + r"stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm)\.(weight|bias)", r"vision.stages.\1.blocks.\2.\3.\4"),
    (_VT + r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision.stages.\1.blocks.\2.mlp.\3.\4"),
    (_VT + r"head\..*", None),
    (_VT + r"norm_pre\..*", None),
)
_COMPILED = tuple((re.compile(pattern + r"$"), target) for pattern, target in RENAME_RULES)
VISION_PREFIX = "model.vision_tower.vision_tower."


def rename(upstream_name: str) -> tuple[bool, str | None]:
    """(matched, our name or None for an ignored tensor)."""
    for pattern, target in _COMPILED:
        match = pattern.match(upstream_name)
        if match:
            return True, (match.expand(target) if target is not None else None)
    return False, None


_GROUP = re.compile(r"\((?:[^()\\]|\\.)*\)")  # a (non-nested) group of a rule's pattern


def _inverse_rules() -> tuple[tuple[re.Pattern, str], ...]:
    """(pattern on our name, upstream name template) per rule: each group of the upstream pattern
    becomes the back-reference the rule's target uses for it, and the reverse."""
    rules = []
    for pattern, target in RENAME_RULES:
        if target is None:
            continue
        groups = _GROUP.findall(pattern)
        ours = re.escape(target)
        for number, group in enumerate(groups, 1):
            ours = ours.replace(re.escape(f"\\{number}"), group)
        template, count = pattern, 0

        def number_group(match):
            nonlocal count
            count += 1
            return f"\\{count}"

        template = _GROUP.sub(number_group, template).replace("\\.", ".")
        rules.append((re.compile(ours + "$"), template))
    return tuple(rules)


_INVERSE = _inverse_rules()


def upstream_name(ours: str) -> str:
    """The checkpoint tensor name a parameter of ours is loaded from (``ours`` when no rule maps
    to it); where two upstream spellings map to one parameter, the first rule's."""
    for pattern, template in _INVERSE:
        match = pattern.match(ours)
        if match:
            return match.expand(template)
    return ours


def vision_relative_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Sequence[int]]:
    """Upstream vision tower tensors with the ``model.vision_tower.vision_tower.`` prefix removed."""
    return {k[len(VISION_PREFIX):]: v for k, v in shapes.items() if k.startswith(VISION_PREFIX)}


@dataclass
class MappingReport:
    """Result of matching a checkpoint's tensors against a model's parameters."""

    mapping: dict[str, str] = field(default_factory=dict)  # upstream -> ours
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.mis_shaped)

    def error_message(self, source: str, limit: int = 8) -> str:
        parts = []
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected), ("mis-shaped", self.mis_shaped)):
            if names:
                shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
                parts.append(f"{label} tensors: {shown}")
        return f"{source}: checkpoint does not match the model: " + "; ".join(parts)


def plan_mapping(
    checkpoint_shapes: Mapping[str, Sequence[int]],
    model_shapes: Mapping[str, Sequence[int]],
    row_overrides: Mapping[str, int] | None = None,
) -> MappingReport:
    """Match upstream names/shapes to our parameters; shape check per key.

    ``row_overrides`` maps our parameter name to the number of leading rows the model keeps
    (the embedding/LM-head resize to the tokenizer length): the checkpoint may have more rows.
    """
    report = MappingReport()
    row_overrides = row_overrides or {}
    seen: set[str] = set()
    for name, shape in checkpoint_shapes.items():
        matched, ours = rename(name)
        if not matched or (ours is not None and ours not in model_shapes):
            report.unexpected.append(name)
            continue
        if ours is None:
            report.ignored.append(name)
            continue
        expected = tuple(model_shapes[ours])
        got = tuple(shape)
        rows = row_overrides.get(ours)
        fits = got == expected or (rows is not None and got[1:] == expected[1:] and got[0] >= expected[0])
        if not fits:
            report.mis_shaped.append(f"{name} {list(got)} (expected {list(expected)})")
        report.mapping[name] = ours
        seen.add(ours)
    # Missing tensors are named as the checkpoint would name them (what a user can look for).
    report.missing = sorted(upstream_name(name) for name in set(model_shapes) - seen)
    return report
