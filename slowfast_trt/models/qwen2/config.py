"""The Qwen2 language model's configuration, and the config-field readers every family uses.

Parsed once from a checkpoint's ``config.json``; a missing or mistyped key is a ``ValueError``
naming the file and the key.
"""

from __future__ import annotations

import json
import math
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


def finite_float(cfg: Mapping[str, Any], key: str, source: str, default: float) -> float:
    """A positive finite number (an int is fine), ``default`` when absent or null."""
    value = cfg.get(key, default)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{source}: key '{key}' must be a positive number, got {value!r}")
    return float(value)


def boolean(cfg: Mapping[str, Any], key: str, source: str, default: bool) -> bool:
    value = cfg.get(key, default)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise ValueError(f"{source}: key '{key}' must be true or false, got {value!r}")
    return value


def token_id(cfg: Mapping[str, Any], key: str, source: str) -> int | None:
    """A token id: an integer >= 0, a list of them (Hugging Face allows several), or null."""
    value = cfg.get(key)
    ids = value if isinstance(value, list) else [value]
    if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{source}: key '{key}' must be a token id (an integer >= 0), a list of them or null, got {value!r}")
    return value


# config.json keys that transformers interprets when it reads the file for the tokenizer.
_TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64", "float", "half", "double", "auto")


def _check_transformers_keys(cfg: Mapping[str, Any], source: str) -> None:
    dtype = cfg.get("torch_dtype")
    if dtype is not None and dtype not in _TORCH_DTYPES:
        raise ValueError(f"{source}: unsupported value {dtype!r} for key 'torch_dtype' (supported: {', '.join(_TORCH_DTYPES)})")
    scaling = cfg.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, Mapping):
        raise ValueError(f"{source}: key 'rope_scaling' must be an object or null, got {scaling!r}")


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
        if boolean(cfg, "use_sliding_window", source, False):
            raise ValueError(f"{source}: unsupported value True for key 'use_sliding_window' (sliding-window attention)")
        # Upstream LlavaQwenSlowFastForCausalLM sets config.rope_scaling = None: plain RoPE always.
        _check_transformers_keys(cfg, source)
        return cls(
            vocab_size=positive_int(cfg, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=positive_int(cfg, "intermediate_size", source),
            num_layers=positive_int(cfg, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            rope_theta=finite_float(cfg, "rope_theta", source, 10000.0),
            rms_norm_eps=finite_float(cfg, "rms_norm_eps", source, 1e-6),
            max_position_embeddings=positive_int(cfg, "max_position_embeddings", source, default=32768),
            tie_word_embeddings=boolean(cfg, "tie_word_embeddings", source, False),
            eos_token_id=token_id(cfg, "eos_token_id", source),
            bos_token_id=token_id(cfg, "bos_token_id", source),
        )


