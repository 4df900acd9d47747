"""Upstream ``config.json`` (``model_type`` ``llava_qwen_slow_fast``) parsed once into frozen dataclasses.

Defaults for absent keys follow what the upstream code does when the attribute is missing
(``getattr(config, key, default)``); keys upstream reads unconditionally are required here.
Anything the upstream code cannot run (or that we do not support) is a ``ValueError`` naming
the key and the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slowfast_trt.models.qwen2.config import TextConfig, positive_int, read_config_json, require

MODEL_TYPE = "llava_qwen_slow_fast"
SUPPORTED_VISION_TOWERS = {"convnext-576": 576}
DEFAULT_FRAMES = 64  # frames per video when a config does not say (the 64-frame checkpoints)


@dataclass(frozen=True)
class CrossAttnConfig:
    """Which decoder layers are hybrid, which rows cross-attend and how the result is gated.

    ``implementation`` (upstream ``cross_attn_implementation``):
      - ``vanilla*``: every row of a sample that contains video attends (upstream ``all2media``);
      - ``text-only-vanilla*``: only text rows attend, never the fast visual tokens;
      - ``...masksystem...`` (text-only only): text rows before the video do not attend;
      - ``...flashattn`` only picks upstream's attention kernel; the math is the same.
    ``gating_type`` (upstream ``cross_attn_gating_type``) must start with ``whole-dynamic``
    (upstream crashes otherwise): gate = Linear(hidden, 1)(attn_out), then ``tanh`` if the name
    contains ``tanh``, times the warm-up scalar if it ends with ``warmup``. The warm-up scalar is
    passed through tanh on the text-only path and used raw on the vanilla path, as upstream does.
    """

    every_n_layers: int
    min_layer_depth: int
    max_layer_depth: int
    implementation: str
    gating_type: str

    @property
    def text_rows_only(self) -> bool:
        return self.implementation.startswith("text-only-vanilla")

    @property
    def mask_system(self) -> bool:
        return self.text_rows_only and "masksystem" in self.implementation

    @property
    def gate_tanh(self) -> bool:
        return "tanh" in self.gating_type

    @property
    def gate_warmup(self) -> bool:
        return self.gating_type.endswith("warmup")

    @property
    def warmup_through_tanh(self) -> bool:
        return self.text_rows_only

    @property
    def hybrid_layers(self) -> tuple[int, ...]:
        return tuple(range(self.min_layer_depth, self.max_layer_depth, self.every_n_layers))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], num_layers: int, source: str) -> "CrossAttnConfig":
        every = positive_int(cfg, "cross_attn_every_n_layers", source)
        lo = cfg.get("cross_attn_min_layer_depth")
        hi = cfg.get("cross_attn_max_layer_depth")
        lo = 0 if lo is None else lo
        hi = num_layers if hi is None else hi
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= num_layers):
            raise ValueError(
                f"{source}: cross_attn_min_layer_depth/cross_attn_max_layer_depth = {lo!r}/{hi!r} "
                f"must satisfy 0 <= min < max <= num_hidden_layers ({num_layers})"
            )
        impl = require(cfg, "cross_attn_implementation", source)
        if not isinstance(impl, str) or not (impl.startswith("vanilla") or impl.startswith("text-only-vanilla")):
            raise ValueError(
                f"{source}: unsupported value {impl!r} for key 'cross_attn_implementation' "
                "(supported: 'vanilla*', 'text-only-vanilla*', optionally with '-masksystem' and '-flashattn')"
            )
        gating = require(cfg, "cross_attn_gating_type", source)
        if not isinstance(gating, str) or not gating.startswith("whole-dynamic"):
            raise ValueError(
                f"{source}: unsupported value {gating!r} for key 'cross_attn_gating_type' "
                "(supported: 'whole-dynamic' with optional '-tanh' and '-warmup', e.g. 'whole-dynamic-tanh-warmup')"
            )
        return cls(every, lo, hi, impl, gating)


_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


@dataclass(frozen=True)
class VisualConfig:
    """Vision tower, projector, video pooling and the slow/fast token split."""

    vision_tower: str
    image_size: int
    mm_hidden_size: int
    projector_type: str
    video_pooling_stride: int
    fast_spatial_stride: int
    fast_temporal_stride: int
    fast_temporal_sampling_stride: int
    min_fast_frames: int

    @property
    def projector_depth(self) -> int:
        """Number of Linear layers in the projector (0 for identity)."""
        if self.projector_type == "linear":
            return 1
        if self.projector_type == "identity":
            return 0
        match = _MLP_GELU.match(self.projector_type)
        assert match, self.projector_type
        return int(match.group(1))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str) -> "VisualConfig":
        tower = require(cfg, "mm_vision_tower", source)
        if tower not in SUPPORTED_VISION_TOWERS:
            raise ValueError(
                f"{source}: unsupported value {tower!r} for key 'mm_vision_tower' "
                f"(supported: {sorted(SUPPORTED_VISION_TOWERS)})"
            )
        projector = cfg.get("mm_projector_type", "linear")
        if projector not in ("linear", "identity") and not _MLP_GELU.match(str(projector)):
            raise ValueError(
                f"{source}: unsupported value {projector!r} for key 'mm_projector_type' "
                "(supported: 'linear', 'identity', 'mlp<N>x_gelu')"
            )
        min_fast = cfg.get("min_fast_frames")
        return cls(
            vision_tower=tower,
            image_size=SUPPORTED_VISION_TOWERS[tower],
            mm_hidden_size=positive_int(cfg, "mm_hidden_size", source),
            projector_type=projector,
            video_pooling_stride=positive_int(cfg, "mm_video_pooling_stride", source),
            fast_spatial_stride=positive_int(cfg, "fast_token_spatial_stride", source),
            fast_temporal_stride=positive_int(cfg, "fast_token_temporal_stride", source),
            fast_temporal_sampling_stride=positive_int(cfg, "fast_token_temporal_sampling_stride", source),
            # upstream: getattr(args, "min_fast_frames", 1), None -> 1
            min_fast_frames=positive_int(cfg, "min_fast_frames", source, default=1) if min_fast is not None else 1,
        )


@dataclass(frozen=True)
class SlowFastConfig:
    """The whole model configuration."""

    text: TextConfig
    cross_attn: CrossAttnConfig
    visual: VisualConfig
    source: str = "config.json"
    # Frames per video the checkpoint was trained with: the default frame count everywhere.
    training_frames: int = DEFAULT_FRAMES

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str = "config.json") -> "SlowFastConfig":
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
        model_type = cfg.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"{source}: unsupported value {model_type!r} for key 'model_type' (expected {MODEL_TYPE!r})")
        text = TextConfig.from_dict(cfg, source)
        return cls(
            text=text,
            cross_attn=CrossAttnConfig.from_dict(cfg, text.num_layers, source),
            visual=VisualConfig.from_dict(cfg, source),
            source=source,
            training_frames=positive_int(cfg, "mm_training_video_frames", source, default=DEFAULT_FRAMES),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "SlowFastConfig":
        return cls.from_dict(read_config_json(path), source=str(path))
