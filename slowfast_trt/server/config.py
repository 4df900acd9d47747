"""``ServerConfig``: every setting of the server, checked once (the CLI builds it from argv)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Server settings; ``check()`` raises ``ValueError`` naming the flag and the expected value."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    media_dir: Path | None = None
    max_upload_bytes: int = 256 * MB  # uploads, data: URLs (decoded) and http(s) downloads
    max_queue: int = 32  # requests waiting for the model (the one running is not counted)
    cache_bytes: int = 2048 * MB  # encoded videos (fast tokens + slow K/V)
    max_sessions: int = 8  # conversations kept for follow-ups (one KV cache each)
    request_timeout_s: float = 600.0
    default_max_tokens: int = 128  # as python -m slowfast_trt.run
    model_name: str = "slowfast"
    allow_text_only: bool = False  # text-only chats; by default a conversation needs a video
    http_media: bool = True  # fetch http(s) video URLs
    fetch_timeout_s: float = 30.0
    max_uploads: int = 64  # uploaded videos kept (oldest removed first)
    data_dir: Path | None = None  # where uploads and fetched media go (default: a temporary folder)

    def check(self) -> "ServerConfig":
        _positive("--port", self.port, minimum=0, maximum=65535)
        _positive("--max-upload-mb", self.max_upload_bytes)
        _positive("--max-queue", self.max_queue)
        _positive("--cache-mb", self.cache_bytes, minimum=0)
        _positive("--max-sessions", self.max_sessions)
        _positive("--default-max-tokens", self.default_max_tokens)
        _positive("--max-uploads", self.max_uploads)
        if not self.request_timeout_s > 0:
            raise ValueError(f"--request-timeout must be > 0 seconds, got {self.request_timeout_s}")
        if self.api_key is not None and (len(self.api_key) < 8 or not self.api_key.isprintable() or " " in self.api_key):
            raise ValueError("--api-key must be at least 8 printable characters without spaces")
        if self.media_dir is not None and not self.media_dir.is_dir():
            raise ValueError(f"--media-dir {self.media_dir}: not a directory")
        if not self.model_name or not self.model_name.isprintable():
            raise ValueError(f"--served-model-name must be a printable non-empty name, got {self.model_name!r}")
        from .security import check_bind

        check_bind(self.host, self.api_key)
        return self


def _positive(flag: str, value: int, minimum: int = 1, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{flag} must be an integer {bound}, got {value!r}")
