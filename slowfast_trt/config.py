"""Upstream ``config.json`` (``model_type`` ``llava_qwen_slow_fast``) parsed once into frozen dataclasses.

Defaults for absent keys follow what the upstream code does when the attribute is missing
(``getattr(config, key, default)``); keys upstream reads unconditionally are required here.
Anything the upstream code cannot run (or that we do not support) is a ``ValueError`` naming
the key and the value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

MODEL_TYPE = "llava_qwen_slow_fast"
SUPPORTED_VISION_TOWERS = {"convnext-576": 576}


def _require(cfg: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{source}: missing required key '{key}'")
    return cfg[key]


def _positive_int(cfg: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        value = default
    if value is None:
        raise ValueError(f"{source}: missing required key '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: key '{key}' must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class TextConfig:
    """The Qwen2 language model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_id: int | None
    bos_token_id: int | None

    @property
    def head_dim(self) -> int:
        # Upstream Qwen2Attention derives it from hidden/heads and ignores any head_dim key.
        return self.hidden_size // self.num_heads

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str) -> "TextConfig":
        hidden = _positive_int(cfg, "hidden_size", source)
        heads = _positive_int(cfg, "num_attention_heads", source)
        kv_heads = _positive_int(cfg, "num_key_value_heads", source, default=heads)
        if hidden % heads:
            raise ValueError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        if heads % kv_heads:
            raise ValueError(f"{source}: num_attention_heads {heads} is not divisible by num_key_value_heads {kv_heads}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: unsupported value {act!r} for key 'hidden_act' (supported: 'silu')")
        if cfg.get("use_sliding_window", False):
            raise ValueError(f"{source}: unsupported value True for key 'use_sliding_window' (sliding-window attention)")
        # Upstream LlavaQwenSlowFastForCausalLM sets config.rope_scaling = None: plain RoPE always.
        return cls(
            vocab_size=_positive_int(cfg, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_positive_int(cfg, "intermediate_size", source),
            num_layers=_positive_int(cfg, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=_positive_int(cfg, "max_position_embeddings", source, default=32768),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_id=cfg.get("eos_token_id"),
            bos_token_id=cfg.get("bos_token_id"),
        )


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
        every = _positive_int(cfg, "cross_attn_every_n_layers", source)
        lo = cfg.get("cross_attn_min_layer_depth")
        hi = cfg.get("cross_attn_max_layer_depth")
        lo = 0 if lo is None else lo
        hi = num_layers if hi is None else hi
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= num_layers):
            raise ValueError(
                f"{source}: cross_attn_min_layer_depth/cross_attn_max_layer_depth = {lo!r}/{hi!r} "
                f"must satisfy 0 <= min < max <= num_hidden_layers ({num_layers})"
            )
        impl = _require(cfg, "cross_attn_implementation", source)
        if not isinstance(impl, str) or not (impl.startswith("vanilla") or impl.startswith("text-only-vanilla")):
            raise ValueError(
                f"{source}: unsupported value {impl!r} for key 'cross_attn_implementation' "
                "(supported: 'vanilla*', 'text-only-vanilla*', optionally with '-masksystem' and '-flashattn')"
            )
        gating = _require(cfg, "cross_attn_gating_type", source)
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
        tower = _require(cfg, "mm_vision_tower", source)
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
            mm_hidden_size=_positive_int(cfg, "mm_hidden_size", source),
            projector_type=projector,
            video_pooling_stride=_positive_int(cfg, "mm_video_pooling_stride", source),
            fast_spatial_stride=_positive_int(cfg, "fast_token_spatial_stride", source),
            fast_temporal_stride=_positive_int(cfg, "fast_token_temporal_stride", source),
            fast_temporal_sampling_stride=_positive_int(cfg, "fast_token_temporal_sampling_stride", source),
            # upstream: getattr(args, "min_fast_frames", 1), None -> 1
            min_fast_frames=_positive_int(cfg, "min_fast_frames", source, default=1) if min_fast is not None else 1,
        )


@dataclass(frozen=True)
class SlowFastConfig:
    """The whole model configuration."""

    text: TextConfig
    cross_attn: CrossAttnConfig
    visual: VisualConfig
    source: str = "config.json"

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
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "SlowFastConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(raw, source=str(path))
