"""The built-in default for the README's main command: a tiny generated checkpoint, a
generated sample video and an ONNX export of the checkpoint, written once into a cache folder.
Random weights: the answer is noise, but every stage of the real pipeline runs (export, then
the runtime on the exported graphs).

:func:`open_demo` loads it, and rebuilds the whole cache once when any part of it is damaged
(a truncated graph, a deleted tokenizer, a corrupt video). :func:`describe` and
:func:`next_steps` say on stderr what the demo is and what to try next; stdout gets the answer
only.
"""

from __future__ import annotations

import os
import shutil
import sys
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


def demo_paths(root: str | Path | None = None) -> dict[str, Path]:
    """Where the demo's parts live: checkpoint, video and export folder."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    return {"root": root, "ckpt": root / "tiny-slowfast-ckpt", "video": root / "sample.mp4",
            "export": root / f"tiny-slowfast-onnx-{DEMO_FRAMES}f"}


def open_demo(load, root: str | Path | None = None, progress=print):
    """``load(export folder)`` of the demo export, made on first use; when the cache is damaged
    (``load`` or reading the sample video fails), it is deleted and built again, once."""
    from slowfast_trt.video import load_video

    paths = demo_paths(root)

    def attempt():
        _, video = ensure_demo_assets(paths["root"])
        load_video(video, 2)  # a damaged sample video is found here, not after the load
        return load(ensure_demo_export(paths["root"], progress))

    try:
        return attempt()
    except (ValueError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        progress(f"the demo cache {paths['root']} is damaged ({reason}); rebuilding it")
    for name in ("ckpt", "video", "export"):
        target = paths[name]
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()
    return attempt()


def describe(question: str, video: str, custom_video: bool, root: str | Path | None = None, out=None) -> None:
    """What the demo runs, on stderr: the question, the video, where the checkpoint and export are."""
    out = out or sys.stderr
    paths = demo_paths(root)
    origin = "your video" if custom_video else "a generated sample video: a white square moving over a changing colour"
    lines = [
        "slowfast_trt demo: the whole pipeline (export to ONNX, then ONNX Runtime) on a built-in model.",
        f"  question:   {question}",
        f"  video:      {video} ({origin})",
        f"  checkpoint: {paths['ckpt']} (a tiny generated Slow-Fast checkpoint with RANDOM weights:",
        "              the answer below is noise; only the stages and the timings are real)",
        f"  export:     {paths['export']} (ONNX Runtime, fp32, made on first use)",
    ]
    print("\n".join(lines), file=out, flush=True)


def next_steps(out=None) -> None:
    """The commands to try after the demo, on stderr."""
    out = out or sys.stderr
    lines = [
        "next:",
        "  python -m slowfast_trt.export --ckpt CKPT --out engines/ --backend onnxruntime   # a real checkpoint "
        "(folder or Hugging Face id)",
        "  python -m slowfast_trt.run --engines engines/ --video clip.mp4 --question \"What happens?\"   # your video",
        "  python -m slowfast_trt.bench --engines engines/ --video clip.mp4 --frames 16 64   # speed and memory",
    ]
    print("\n".join(lines), file=out, flush=True)
