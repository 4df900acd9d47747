"""Helpers for the server tests (no fixtures here: each test module makes its own).

The export and the shared server are built once per pytest session whatever module asks
first: the export lives under pytest's session base folder, and the server process is a
module-level singleton stopped at exit.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_KEY = "test-key-0123456789"
QUESTION = "What happens in the video?"
FOLLOWUP = "And what comes next?"
FRAMES = 4
MAX_SEQ_LEN = 2048  # room for long answers (disconnect and queue tests)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def shared_export(tmp_path_factory) -> Path:
    """A tiny checkpoint's ONNX Runtime export (4 frames, 512 rows), made once per session."""
    base = tmp_path_factory.getbasetemp() / "server_shared"
    base.mkdir(exist_ok=True)
    out = base / "tiny-export"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            from slowfast_trt.fixtures.tiny_checkpoint import write_tiny_checkpoint

            ckpt = write_tiny_checkpoint(base / "ckpt")
            proc = subprocess.run([sys.executable, "-m", "slowfast_trt.export", "--ckpt", str(ckpt), "--out", str(out),
                                   "--backend", "onnxruntime", "--frames", str(FRAMES), "--max-seq-len",
                                   str(MAX_SEQ_LEN), "--force"], env=_env(), capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"export failed: {proc.stderr[-2000:]}"
    return out


def shared_media(tmp_path_factory) -> Path:
    """A media folder with two different sample videos (a.mp4, b.mp4), made once per session."""
    from slowfast_trt.fixtures.sample_video import write_sample_video

    media = tmp_path_factory.getbasetemp() / "server_shared" / "media"
    if not (media / "b.mp4").is_file():
        media.mkdir(parents=True, exist_ok=True)
        write_sample_video(media / "a.mp4", num_frames=40)
        write_sample_video(media / "b.mp4", num_frames=24, width=64, height=48)
    return media


def file_url(path) -> str:
    return Path(os.path.abspath(path)).as_uri()


def video_message(url: str, question: str = QUESTION, **selection) -> dict:
    return {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url, **selection}},
                                        {"type": "text", "text": question}]}


def run_cli(export: Path, video: Path, question: str, max_new_tokens: int, out: Path) -> dict:
    """``python -m slowfast_trt.run --json`` in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "slowfast_trt.run", "--engines", str(export), "--video", str(video),
                           "--question", question, "--max-new-tokens", str(max_new_tokens), "--threads", "1",
                           "--json", str(out)], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"run failed: {proc.stderr[-2000:]}"
    return json.loads(out.read_text())


class ServerProcess:
    """``python -m slowfast_trt.serve`` on 127.0.0.1 and a free port, in a subprocess."""

    def __init__(self, export: Path, *args: str, api_key: str | None = API_KEY):
        self.api_key = api_key
        cmd = [sys.executable, "-m", "slowfast_trt.serve", "--engines", str(export), "--port", "0", "--threads", "1",
               *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.log: list[str] = []
        self._http = None
        self.url = self._wait_listening(timeout=180)
        self.model = export.name
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited ({self.proc.returncode}): {''.join(self.log)[-2000:]}")
                continue
            self.log.append(line)
            if line.startswith("listening on "):
                return line.split()[2]
        raise RuntimeError("server did not start in time")

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs):
        import openai

        kwargs.setdefault("api_key", self.api_key or "none")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=kwargs.pop("timeout", 120), **kwargs)

    def http(self, **kwargs):
        import httpx

        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 120), **kwargs)

    def metrics(self) -> dict[str, float]:
        from slowfast_trt.server.metrics import parse_metrics

        if self._http is None:  # one client: making one costs a TLS context each time
            self._http = self.http()
        response = self._http.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_SHARED: dict[str, ServerProcess] = {}


def shared_server(tmp_path_factory) -> ServerProcess:
    """One server for the default tests: API key, media folder, 1 MB uploads, a short queue."""
    if "server" not in _SHARED or not _SHARED["server"].alive():
        export = shared_export(tmp_path_factory)
        media = shared_media(tmp_path_factory)
        server = ServerProcess(export, "--media-dir", str(media), "--max-upload-mb", "1", "--max-queue", "2",
                               "--max-sessions", "4", "--default-max-tokens", "8")
        atexit.register(server.stop)
        _SHARED["server"] = server
    return _SHARED["server"]
