"""The built-in default for the README's main command: a tiny generated checkpoint, a
generated sample video and an ONNX export of the checkpoint, written once into a cache folder.
Random weights: the answer is noise, but every stage of the real pipeline runs (export, then
the runtime on the exported graphs).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path(os.path.expanduser("~")) / ".cache" / "slowfast_trt" / "demo"
DEMO_QUESTION = "What is happening in this video?"
DEMO_FRAMES = 16


def ensure_demo_assets(root: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint directory, video path), created on first use."""
    from slowfast_trt.fixtures.sample_video import write_sample_video
    from slowfast_trt.fixtures.tiny_checkpoint import write_tiny_checkpoint

    root = Path(root) if root is not None else DEFAULT_ROOT
    ckpt, video = root / "tiny-slowfast-ckpt", root / "sample.mp4"
    if not (ckpt / "config.json").is_file():
        write_tiny_checkpoint(ckpt)
    if not video.is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_sample_video(video, num_frames=48)
    return ckpt, video


def ensure_demo_export(root: str | Path | None = None, progress=print) -> Path:
    """An ONNX Runtime export (fp32, 16 frames) of the demo checkpoint, created on first use."""
    from slowfast_trt.export.pipeline import ExportRequest, export_checkpoint

    root = Path(root) if root is not None else DEFAULT_ROOT
    ckpt, _ = ensure_demo_assets(root)
    out = root / f"tiny-slowfast-onnx-{DEMO_FRAMES}f"
    if not _current_export(out):
        progress(f"exporting the demo checkpoint to {out} ...")
        export_checkpoint(ExportRequest(ckpt=str(ckpt), out=out, backend="onnxruntime", precision="fp32",
                                        frames=DEMO_FRAMES, max_seq_len=2048, force=True))
    return out


def _current_export(folder: Path) -> bool:
    """True when ``folder`` holds an export this package version reads (an older one, e.g.
    from before a graph format change, is exported again rather than refused)."""
    from slowfast_trt._version import __version__
    from slowfast_trt.export.manifest import check_manifest, load_manifest

    if not (folder / "manifest.json").is_file():
        return False
    try:
        check_manifest(load_manifest(folder), __version__)
    except ValueError:
        return False
    return True
