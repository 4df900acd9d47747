"""glibc malloc thresholds for eager CPU inference (``slowfast_trt/host_allocator.py``): applied
once per process by the torch backend on CPU, off with ``SLOWFAST_TRT_MALLOC=system``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

_PROBE = "from slowfast_trt.host_allocator import keep_freed_memory as k; print(k(), k())"


def _probe(**env) -> str:
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env={**os.environ, **env}, check=True)
    return run.stdout.strip()


def test_applied_once_on_glibc():
    assert _probe() == "True True"


def test_opt_out_leaves_malloc_alone():
    assert _probe(SLOWFAST_TRT_MALLOC="system") == "False False"


def test_torch_backend_on_cpu_applies_it(tiny_ckpt, monkeypatch):
    import slowfast_trt.host_allocator as allocator
    from slowfast_trt import SlowFastRuntime

    if os.environ.get("SLOWFAST_TRT_MALLOC", "").lower() == "system":
        pytest.skip("opted out for this test run")
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    SlowFastRuntime.load(str(tiny_ckpt), backend="torch", device="cpu").close()
    assert calls == [1]
