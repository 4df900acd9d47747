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
| ``conversation``      | the template as code: ``(system=, has_video=) -> Conversation``        |
| ``stop_ids``          | ``(tokenizer, config) -> ids`` that end an answer                      |
| ``sample_video``      | ``(path, **options) -> VideoFrames``: the frames a file gives the model |
| ``video_options``     | the ``sample_video`` options it takes (``frames``, ``sampling``, ...)  |
| ``runtime``           | ``"module:Class"`` under ``slowfast_trt.runtime`` that runs it (its    |
|                       | video encoder, session and what the session caches)                    |

Adding a family: a package ``slowfast_trt/models/<family>/`` with these pieces and one line in
:data:`slowfast_trt.models.registry.BUILTIN` (see ARCHITECTURE.md). ``runtime`` is a name, not an
import: models sit below the runtime layer; :mod:`slowfast_trt.runtime.families` resolves it, and
``SlowFastRuntime.load`` hands a source of another family to that class.
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
    conversation: Callable[..., Any] | None = None
    stop_ids: Callable[[Any, Any], tuple[int, ...]] | None = None
    sample_video: Callable[..., Any] | None = None
    video_options: tuple[str, ...] = ()
    runtime: str = ""
