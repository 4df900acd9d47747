"""The Qwen2 language model's configuration, and the config-field readers every family uses.

Parsed once from a checkpoint's ``config.json``; a missing or mistyped key is a ``ValueError``
naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


def read_config_json(path: str | Path) -> Any:
    """The parsed ``config.json`` at ``path`` (a ``ValueError`` naming the file when absent or not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def require(cfg: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{source}: missing required key '{key}'")
    return cfg[key]


def positive_int(cfg: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
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
        hidden = positive_int(cfg, "hidden_size", source)
        heads = positive_int(cfg, "num_attention_heads", source)
        kv_heads = positive_int(cfg, "num_key_value_heads", source, default=heads)
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
            vocab_size=positive_int(cfg, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=positive_int(cfg, "intermediate_size", source),
            num_layers=positive_int(cfg, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=positive_int(cfg, "max_position_embeddings", source, default=32768),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_id=cfg.get("eos_token_id"),
            bos_token_id=cfg.get("bos_token_id"),
        )


