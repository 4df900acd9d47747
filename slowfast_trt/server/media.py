"""Resolve a content part's URL to a local file with its content hash (or a live stream).

Accepted URLs: ``file://`` inside ``--media-dir``, ``data:<type>;base64,...``, an upload's
``video-...`` id (bare or as ``video://ID``), ``stream://ID`` (a live stream), and
``http(s)://`` (downloaded under the size limit, redirects to other schemes refused). This
runs in a worker thread of the web server, not on the model's thread: hashing, decoding a
data URL or downloading never holds up generation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .blobs import Blob, BlobStore, too_large
from .config import ServerConfig
from .conversation import MediaPart
from .errors import APIError
from .security import media_path
from .uploads import UploadRegistry

__all__ = ["MediaResolver", "ResolvedMedia"]

_CHUNK = 1 << 16
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class ResolvedMedia:
    """A file to encode (``path``, ``sha256``) or a live stream (``stream_id``)."""

    kind: str  # "video", "image" or "live"
    path: Path | None = None
    sha256: str = ""
    blob: Blob | None = None  # a held reference, released when the request ends
    stream_id: str | None = None


class MediaResolver:
    def __init__(self, config: ServerConfig, store: BlobStore, uploads: UploadRegistry):
        self._config = config
        self._store = store
        self._uploads = uploads
        self._hashes: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256 of media-dir files
        self._lock = threading.Lock()

    def resolve(self, part: MediaPart) -> ResolvedMedia:
        url = part.url
        head = url[:16]  # a data: URL may be huge: look at its start only
        scheme = head.split(":", 1)[0].lower() if ":" in head else ""
        if scheme == "file":
            return self._file(url)
        if scheme == "data":
            return self._held(self._data(url, part.param))
        if scheme in ("http", "https"):
            return self._held(self._download(url))
        if scheme == "stream":
            stream_id = url.split("://", 1)[-1] if "://" in url else url.split(":", 1)[1]
            return ResolvedMedia("live", stream_id=stream_id)
        if scheme == "video" or (not scheme and url.startswith("video-")):
            upload = self._uploads.get(url.split("://", 1)[-1])
            return self._held(self._store.acquire(upload.blob))
        raise APIError(400, f"{part.param}: unsupported URL {url[:60]!r}: use file://, data:, http(s)://, "
                            "an uploaded video's id or stream://ID", param=part.param, code="bad_media_url")

    def release(self, media: ResolvedMedia | None) -> None:
        if media is not None and media.blob is not None:
            self._store.release(media.blob)

    # -- sources --------------------------------------------------------------------------

    @staticmethod
    def _held(blob: Blob) -> ResolvedMedia:
        return ResolvedMedia(blob.kind, blob.path, blob.sha256, blob)

    def _file(self, url: str) -> ResolvedMedia:
        path = media_path(self._config.media_dir, url)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            sha = self._hashes.get(key)
        if sha is None:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            sha = digest.hexdigest()
            with self._lock:
                if len(self._hashes) > 4096:
                    self._hashes.clear()
                self._hashes[key] = sha
        kind = "image" if path.suffix.lower() in _IMAGE_SUFFIXES else "video"
        return ResolvedMedia(kind, path, sha)

    def _data(self, url: str, param: str) -> Blob:
        header, comma, payload = url[5:].partition(",")
        if not comma or ";base64" not in header.lower():
            raise APIError(400, f"{param}: data: URLs must be base64 (data:video/mp4;base64,...)", param=param)
        limit = self._config.max_upload_bytes
        # Four characters carry three bytes: refuse before decoding anything.
        if (len(payload) // 4) * 3 > limit + 3:
            raise too_large("base64 data", limit)
        writer = self._store.writer(limit, "base64 data")
        try:
            step = 4 * (1 << 18)  # decode 1 MiB at a time
            for start in range(0, len(payload), step):
                writer.write(base64.b64decode(payload[start:start + step], validate=True))
        except binascii.Error:
            writer.abort()
            raise APIError(400, f"{param}: the data: URL is not valid base64", param=param) from None
        except BaseException:
            writer.abort()
            raise
        return self._store.commit(writer, "data: URL")

    def _download(self, url: str) -> Blob:
        if not self._config.http_media:
            raise APIError(400, "http(s) media URLs are disabled on this server (--no-http-media)", code="bad_media_url")
        limit = self._config.max_upload_bytes
        opener = urllib.request.build_opener(_HttpOnlyRedirects)
        try:
            response = opener.open(urllib.request.Request(url, headers={"User-Agent": "slowfast-trt-server"}),
                                   timeout=self._config.fetch_timeout_s)
        except urllib.error.HTTPError as exc:
            raise APIError(400, f"fetching {url[:80]} failed: HTTP {exc.code}", code="fetch_failed") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise APIError(400, f"fetching {url[:80]} failed: {getattr(exc, 'reason', exc)}", code="fetch_failed") from None
        with response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise too_large("the download", limit)
            writer = self._store.writer(limit, "the download")
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    writer.write(chunk)
            except APIError:
                raise
            except (OSError, ValueError) as exc:
                writer.abort()
                raise APIError(400, f"fetching {url[:80]} failed: {exc}", code="fetch_failed") from None
        return self._store.commit(writer, "the download")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to a non-http URL refused ({newurl[:60]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def file_url(path: str | os.PathLike) -> str:
    """``file://`` URL of a local path (for listings and tests)."""
    return Path(os.path.abspath(path)).as_uri()
