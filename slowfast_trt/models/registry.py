"""The registry of model families: which family a checkpoint or an export belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slowfast_trt.models.family import ModelFamily
from slowfast_trt.models.longvu.family import LONGVU
from slowfast_trt.models.qwen2.config import read_config_json
from slowfast_trt.models.slowfast.family import SLOWFAST

__all__ = ["BUILTIN", "family_named", "family_of_checkpoint", "family_of_config", "families", "register"]

BUILTIN: tuple[ModelFamily, ...] = (SLOWFAST, LONGVU)
_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Make ``family`` known to :func:`family_of_checkpoint` (one per name and model type)."""
    for other in _FAMILIES.values():
        clash = set(other.model_types) & set(family.model_types)
        if other.name != family.name and clash:
            raise ValueError(f"model type(s) {sorted(clash)} already belong to family {other.name!r}")
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[ModelFamily, ...]:
    return tuple(_FAMILIES.values())


def family_named(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def family_of_config(raw: Any, source: str = "config.json") -> ModelFamily:
    """The family whose ``model_types`` holds ``raw["model_type"]``."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(f"{t!r} ({f.name})" for f in _FAMILIES.values() for t in f.model_types)
    raise ValueError(f"{source}: unsupported value {model_type!r} for key 'model_type' (supported: {known})")


def family_of_checkpoint(directory: str | Path) -> ModelFamily:
    """The family of a checkpoint folder, from its ``config.json``."""
    path = Path(directory) / "config.json"
    return family_of_config(read_config_json(path), str(path))


for _family in BUILTIN:
    register(_family)
