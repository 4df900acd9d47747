"""The ``run --demo`` assets: created once, reused, and exported again when stale."""

from __future__ import annotations

import json

from slowfast_trt.cli.demo import ensure_demo_export
from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime


def test_demo_export_is_made_once_and_remade_when_stale(tmp_path):
    messages = []
    out = ensure_demo_export(tmp_path, progress=messages.append)
    assert len(messages) == 1 and (out / "manifest.json").is_file()
    assert ensure_demo_export(tmp_path, progress=messages.append) == out and len(messages) == 1  # reused
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format"] = 1  # an export from before the graphs took past_length
    (out / "manifest.json").write_text(json.dumps(manifest))
    ensure_demo_export(tmp_path, progress=messages.append)
    assert len(messages) == 2  # exported again instead of refused
    rt = SlowFastRuntime.load(out, threads=1)
    assert "past_length" in rt._model.engines["decoder"].input_names
