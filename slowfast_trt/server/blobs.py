"""Media files the server holds: uploads, decoded ``data:`` URLs and downloads.

Files are stored once per content (named by SHA-256) and reference-counted: an upload holds
one reference until it is deleted, a request holds one while it waits and runs; a file
nobody references is removed. Bytes are counted while they are written, so a size limit
stops an oversized body as soon as it is crossed, and content is checked by decoding
(PIL for images, PyAV for one video frame) before a file is kept.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import APIError

__all__ = ["Blob", "BlobStore", "BlobWriter", "probe_media"]

_IMAGE_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}
# Suffix for video content: the runtime reads images by suffix and everything else with PyAV.
VIDEO_SUFFIX = ".video"


@dataclass(frozen=True)
class Blob:
    sha256: str
    path: Path
    size: int
    kind: str  # "video" or "image"


def too_large(what: str, limit: int) -> APIError:
    return APIError(413, f"{what} is larger than the server's limit of {limit / 2**20:g} MB (--max-upload-mb)",
                    code="too_large")


class BlobWriter:
    """Write one file in pieces, hashing and counting; over ``limit`` bytes it aborts with a 413."""

    def __init__(self, root: Path, limit: int, what: str):
        fd, name = tempfile.mkstemp(dir=root, prefix=".incoming-")
        self._file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.limit, self.what = limit, what
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.abort()
            raise too_large(self.what, self.limit)
        self._hash.update(data)
        self._file.write(data)

    def finish(self) -> tuple[Path, str, int]:
        self._file.close()
        return self.path, self._hash.hexdigest(), self.size

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def probe_media(path: Path, what: str) -> tuple[str, str]:
    """(kind, suffix) of a file by decoding it; a 400 when it is neither a video nor an image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format in _IMAGE_SUFFIX:
                image.load()
                return "image", _IMAGE_SUFFIX[image.format]
    except Image.DecompressionBombError:
        raise APIError(400, f"{what}: image is too large to decode", code="invalid_media") from None
    except (OSError, ValueError, SyntaxError):
        pass  # not an image PIL knows: try it as a video
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise APIError(400, f"{what}: the file has no video stream", code="invalid_media")
            for _ in container.decode(video=0):
                return "video", VIDEO_SUFFIX
    except APIError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        pass
    raise APIError(400, f"{what}: not a video or image this server can decode", code="invalid_media")


class BlobStore:
    """Content-addressed, reference-counted files under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._blobs: dict[str, Blob] = {}
        self._refs: dict[str, int] = {}

    def writer(self, limit: int, what: str) -> BlobWriter:
        return BlobWriter(self.root, limit, what)

    def commit(self, writer: BlobWriter, what: str) -> Blob:
        """Check the written file by decoding it and keep it; the caller holds one reference."""
        path, sha, size = writer.finish()
        try:
            kind, suffix = probe_media(path, what)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        with self._lock:
            blob = self._blobs.get(sha)
            if blob is None:
                blob = Blob(sha, self.root / f"{sha}{suffix}", size, kind)
                os.replace(path, blob.path)
                self._blobs[sha] = blob
            else:
                path.unlink(missing_ok=True)
            self._refs[sha] = self._refs.get(sha, 0) + 1
            return blob

    def acquire(self, blob: Blob) -> Blob:
        with self._lock:
            if blob.sha256 not in self._blobs:
                raise APIError(404, "this video was deleted", code="video_not_found")
            self._refs[blob.sha256] += 1
            return blob

    def release(self, blob: Blob) -> None:
        with self._lock:
            left = self._refs.get(blob.sha256, 0) - 1
            if left > 0:
                self._refs[blob.sha256] = left
                return
            self._refs.pop(blob.sha256, None)
            if self._blobs.pop(blob.sha256, None) is not None:
                blob.path.unlink(missing_ok=True)

    @property
    def bytes_stored(self) -> int:
        with self._lock:
            return sum(b.size for b in self._blobs.values())
