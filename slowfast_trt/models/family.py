"""What differs between model families, written down as code, and the registry that picks one.

A family is everything that turns *its* checkpoint and *its* videos into what the shared runtime
runs: the Qwen2 decoder runner, the KV cache, sampling, the decode loop, sessions, engines and the
CLIs are shared and know no family. A family says:

| hook / field          | what it decides                                                        |
|-----------------------|------------------------------------------------------------------------|
| ``name``              | how manifests and ``--family`` name it                                 |
| ``model_types``       | the ``config.json`` ``model_type`` values of its checkpoints           |
| ``read_config``       | checkpoint folder -> its frozen config (``ValueError`` naming the key) |
| ``load_model``        | checkpoint folder -> its PyTorch modules (``torch`` backend, export)   |
| ``subgraphs``         | which ONNX graphs an export holds (vision side, decoder forms)         |
| ``prompt_template``   | the conversation template its prompts use                              |
| ``video_cache``       | what a session keeps per video and reuses across questions             |

Adding a family: a package ``slowfast_trt/models/<family>/`` with these pieces and one line in
:data:`slowfast_trt.models.registry.BUILTIN` (see ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["ModelFamily"]


@dataclass(frozen=True)
class ModelFamily:
    """One model family (module table)."""

    name: str
    model_types: tuple[str, ...]
    read_config: Callable[[Path], Any]
    load_model: Callable[..., Any]
    subgraphs: tuple[str, ...]
    prompt_template: str
    video_cache: str
