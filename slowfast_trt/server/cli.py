"""``python -m slowfast_trt.serve``: an OpenAI-compatible video chat server and web demo.

    python -m slowfast_trt.serve (--engines DIR | --ckpt CKPT) [--host 127.0.0.1] [--port 8000]
        [--api-key KEY] [--media-dir DIR] [--max-upload-mb N] [--max-queue N] [--cache-mb N]
        [--backend auto|tensorrt|onnxruntime|torch]

Binds 127.0.0.1 by default; any other address needs --api-key. ``--port 0`` picks a free
port. Prints one ``listening on http://HOST:PORT`` line on stderr once it accepts
connections. Bad arguments print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from .config import MB, ServerConfig

__all__ = ["build_parser", "config_from_args", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse prints usage first otherwise)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m slowfast_trt.serve", description=__doc__.split("\n")[0])
    src = p.add_argument_group("model")
    src.add_argument("--engines", help="export folder from python -m slowfast_trt.export")
    src.add_argument("--ckpt", help="checkpoint folder or Hugging Face repo id (PyTorch backend)")
    src.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto")
    src.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best available)")
    src.add_argument("--threads", type=int, default=None, help="intra-op threads (ONNX Runtime; torch for --ckpt)")
    src.add_argument("--decode-mode", choices=("upstream", "attend"), default="upstream")
    src.add_argument("--served-model-name", default=None, help="model id clients send (default: the folder's name)")
    net = p.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --api-key)")
    net.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    net.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set SLOWFAST_API_KEY)")
    net.add_argument("--media-dir", default=None, help="folder whose files file:// URLs may name")
    net.add_argument("--max-upload-mb", type=float, default=256, help="limit of an upload, data: URL or download")
    net.add_argument("--no-http-media", action="store_true", help="refuse http(s) media URLs")
    net.add_argument("--allow-text-only", action="store_true", help="answer chats that have no video")
    load = p.add_argument_group("load")
    load.add_argument("--max-queue", type=int, default=32, help="requests waiting for the model before 429")
    load.add_argument("--cache-mb", type=float, default=2048, help="memory for encoded videos (LRU)")
    load.add_argument("--max-sessions", type=int, default=8, help="conversations kept for follow-ups")
    load.add_argument("--request-timeout", type=float, default=600, help="seconds a request may wait and run")
    load.add_argument("--default-max-tokens", type=int, default=128, help="max_tokens when a request gives none")
    load.add_argument("--max-uploads", type=int, default=64, help="uploaded videos kept (oldest removed first)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning")
    return p


def config_from_args(args) -> ServerConfig:
    if bool(args.engines) == bool(args.ckpt):
        raise ValueError("give exactly one of --engines DIR or --ckpt CKPT")
    source = args.engines or args.ckpt
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--cache-mb", args.cache_mb)):
        if not value >= 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    return ServerConfig(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get("SLOWFAST_API_KEY") or None,
        media_dir=Path(args.media_dir) if args.media_dir else None, max_upload_bytes=int(args.max_upload_mb * MB),
        max_queue=args.max_queue, cache_bytes=int(args.cache_mb * MB), max_sessions=args.max_sessions,
        request_timeout_s=args.request_timeout, default_max_tokens=args.default_max_tokens,
        model_name=args.served_model_name or Path(str(source).rstrip("/")).name or "slowfast",
        allow_text_only=args.allow_text_only, http_media=not args.no_http_media, max_uploads=args.max_uploads,
    ).check()


def _load_runtime(args):
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.ckpt and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    source = args.engines or args.ckpt
    if args.engines and not Path(source).is_dir():
        raise ValueError(f"--engines {source}: export folder not found")
    return SlowFastRuntime.load(source, backend=args.backend, device=args.device or (None if args.engines else "cpu"),
                                decode_mode=args.decode_mode, threads=args.threads if args.engines else None)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, load the model, serve until interrupted; 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        print(f"error: the server needs its extra: pip install 'slowfast-trt[server]' ({exc.name} is missing)",
              file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
        sock = _bind(config.host, config.port)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        runtime = _load_runtime(args)
    except (ValueError, OSError) as exc:
        sock.close()
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    app = create_app(runtime, config, close_runtime=True)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, server_header=False, access_log=False,
                                           timeout_graceful_shutdown=5))
    _announce(server, f"listening on http://{shown}:{port} (model {config.model_name!r}, backend {runtime.backend})")
    server.run(sockets=[sock])
    return 0


def _announce(server, line: str) -> None:
    """Print ``line`` once uvicorn has started (it sets ``started`` after startup)."""
    import threading
    import time

    def wait():
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            print(line, file=sys.stderr, flush=True)

    threading.Thread(target=wait, daemon=True).start()
