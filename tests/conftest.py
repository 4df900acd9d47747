"""Shared fixtures: tiny generated checkpoints and videos; the ``gpu`` marker.

Tests run on one thread: torch 2.13 on CPU with several threads sometimes returns slightly
wrong values from the first cos() of a process (see shared/reference/FACTS.md), and exact
parity checks must not depend on thread scheduling.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # Decide at collection, without touching CUDA at import time of any test module.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Default tiny checkpoint (frame64-s1t4 config, min_fast_frames 16)."""
    from slowfast_trt.fixtures.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def tiny_ckpt_pool3d(tmp_path_factory):
    """Tiny checkpoint whose min_fast_frames (4) puts 32 frames on the avg_pool3d branch."""
    from slowfast_trt.fixtures.tiny_checkpoint import TinySpec, write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt_pool3d"), TinySpec(overrides={"min_fast_frames": 4}))


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory):
    from slowfast_trt.fixtures.sample_video import write_sample_video

    return write_sample_video(tmp_path_factory.mktemp("video") / "sample.mp4", num_frames=40)


@pytest.fixture(scope="session")
def reference(tiny_ckpt):
    from slowfast_trt.models.slowfast.reference import ReferenceGenerator

    return ReferenceGenerator.load(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_exports(request, tmp_path_factory):
    """ckpt fixture name -> its fp32 ONNX Runtime export (one per checkpoint for the whole run:
    one export serves every frame count 1..64)."""
    from slowfast_trt.export.pipeline import ExportRequest, export_checkpoint

    root, cache = tmp_path_factory.mktemp("tiny_exports"), {}

    def get(name: str):
        if name not in cache:
            out = root / name
            export_checkpoint(ExportRequest(ckpt=str(request.getfixturevalue(name)), out=out, backend="onnxruntime",
                                            precision="fp32", max_seq_len=1600))
            cache[name] = out
        return cache[name]

    return get
