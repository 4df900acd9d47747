"""Security checks: loopback binding, the bearer token, and ``file://`` paths inside ``--media-dir``."""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import APIError

__all__ = ["BearerAuth", "check_bind", "is_loopback", "media_path"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only when every address it names is
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise ValueError(f"--host {host} is not a loopback address: other machines could reach the server, "
                         "so it needs --api-key KEY (or bind 127.0.0.1)")


class BearerAuth:
    """``Authorization: Bearer KEY`` compared in constant time; no key configured admits everyone."""

    def __init__(self, api_key: str | None):
        self._key = api_key.encode("utf-8") if api_key else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def check(self, header: str | None) -> None:
        """Raise a 401 ``APIError`` unless ``header`` carries the key."""
        if self._key is None:
            return
        scheme, _, token = (header or "").partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="missing_api_key")
        # compare_digest takes as long for any wrong key of a given length: no timing oracle.
        if not hmac.compare_digest(token.strip().encode("utf-8"), self._key):
            raise APIError(401, "invalid API key", code="invalid_api_key")


def media_path(media_dir: Path | None, url: str) -> Path:
    """The regular file a ``file://`` URL names, which must lie inside ``media_dir``.

    ``file:///abs/path`` and ``file:relative/path`` (relative to ``media_dir``) are accepted;
    a ``..`` component, a host other than ``localhost``, and a path whose symlinks resolve
    outside ``media_dir`` are refused with a 400.
    """
    if media_dir is None:
        raise APIError(400, "file:// URLs are disabled: start the server with --media-dir DIR", code="media_dir_unset")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise APIError(400, f"file:// URL with host {parts.netloc!r}: use file:///path/inside/media-dir", code="bad_media_url")
    raw = unquote(parts.path)
    if not raw or "\x00" in raw:
        raise APIError(400, "file:// URL without a path", code="bad_media_url")
    if ".." in Path(raw).parts:
        raise APIError(400, "file:// path contains '..'; give a path inside --media-dir", code="path_outside_media_dir")
    root = Path(os.path.realpath(media_dir))
    candidate = Path(raw) if os.path.isabs(raw) else root / raw
    # Compare resolved paths: a symlink inside the folder that points outside is caught here.
    resolved = Path(os.path.realpath(candidate))
    if not _inside(Path(os.path.abspath(candidate)), root, Path(os.path.abspath(media_dir))) or not _inside(resolved, root):
        raise APIError(400, "file:// path is outside --media-dir", code="path_outside_media_dir")
    if not resolved.is_file():
        raise APIError(404, f"no such file in --media-dir: {raw}", code="media_not_found")
    return resolved


def _inside(path: Path, *roots: Path) -> bool:
    return any(path == root or root in path.parents for root in roots)
