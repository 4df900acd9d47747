"""Which runtime class runs a source: the family of an export folder or a checkpoint.

An export folder names its family in ``manifest.json`` (``"family"``; absent in older Slow-Fast
exports: ``slowfast``); a checkpoint folder by its ``config.json`` ``model_type``
(:mod:`slowfast_trt.models.registry`). The family's ``runtime`` field (``"module:Class"`` under
``slowfast_trt.runtime``) is resolved here, so the model layer never imports the runtime.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from slowfast_trt.models.family import ModelFamily
from slowfast_trt.models.registry import family_named, family_of_config

__all__ = ["family_of_source", "runtime_class", "runtime_for"]


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _hub_config(repo_id: str) -> Path | None:
    """``config.json`` of a Hub repo: from the cache, else downloaded alone; None if neither works."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
        return Path(cached) if isinstance(cached, str) else Path(hf_hub_download(repo_id, "config.json"))
    except Exception:  # offline, unknown repo: the caller's loading reports it
        return None


def family_of_source(source: str | os.PathLike) -> ModelFamily | None:
    """The family of an export folder, a checkpoint folder or a Hub id; None when it cannot tell
    (a missing or broken folder: the caller's own loading then says what is wrong)."""
    path = Path(source)
    if not path.is_dir():
        config_path = _hub_config(str(source))
        config = _json(config_path) if config_path is not None else None
        try:
            return family_of_config(config) if isinstance(config, dict) else None
        except ValueError:
            return None
    manifest = _json(path / "manifest.json") if (path / "manifest.json").is_file() else None
    try:
        if isinstance(manifest, dict):
            return family_named(manifest.get("family") or "slowfast")
        config = _json(path / "config.json")
        return family_of_config(config) if isinstance(config, dict) else None
    except ValueError:
        return None


def runtime_class(family: ModelFamily) -> type:
    """The class named by ``family.runtime``."""
    module, _, name = family.runtime.partition(":")
    if not module or not name:
        raise ValueError(f"model family {family.name!r} names no runtime")
    return getattr(importlib.import_module(f"slowfast_trt.runtime.{module}"), name)


def runtime_for(source: str | os.PathLike) -> type | None:
    """The runtime class of ``source``'s family, or None when the family cannot be told."""
    family = family_of_source(source)
    return runtime_class(family) if family is not None and family.runtime else None
