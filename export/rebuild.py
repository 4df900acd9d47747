"""The one wording of each "rebuild" advice, naming the command that fixes that cause.

* The export folder itself is stale or damaged (graph format, package version, custom-op version,
  another checkpoint, missing or changed files): only a new export fixes it.
* The TensorRT engines do not match this device (TensorRT version, GPU) or are missing: the ONNX
  graphs are fine, so the engines are rebuilt from them on the device (this is the Jetson flow).
"""

from __future__ import annotations

from pathlib import Path


def reexport(folder: str | Path | None = None) -> str:
    """Advice for a stale or damaged export folder."""
    return f"re-export it: python -m slowfast_trt.export --ckpt CKPT --out {folder or 'DIR'} --force"


def rebuild_engines(folder: str | Path | None = None) -> str:
    """Advice for TensorRT engines that are missing or were built for another TensorRT or GPU."""
    return f"rebuild the engines on this device from the ONNX graphs: slowfast-trt-build {folder or 'DIR'}"
