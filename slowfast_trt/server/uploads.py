"""Uploaded videos (``POST /v1/videos``) and request bodies read under a byte limit.

An upload is either ``multipart/form-data`` with a ``file`` field (as OpenAI's files API)
or the raw bytes with a ``video/*`` / ``image/*`` / ``application/octet-stream`` type. The
body is streamed into a :class:`~.blobs.BlobWriter`, so a body over the limit is refused
when the limit is crossed, without buffering it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from .blobs import Blob, BlobStore, BlobWriter, too_large
from .errors import APIError

__all__ = ["Upload", "UploadRegistry", "read_body", "receive_upload"]


@dataclass(frozen=True)
class Upload:
    id: str
    blob: Blob
    filename: str
    created: int

    def to_json(self) -> dict:
        return {"id": self.id, "object": "video", "bytes": self.blob.size, "created_at": self.created,
                "filename": self.filename, "kind": self.blob.kind, "sha256": self.blob.sha256}


class UploadRegistry:
    """Upload ids -> blobs; at most ``max_uploads`` (the oldest goes first)."""

    def __init__(self, store: BlobStore, max_uploads: int):
        self._store = store
        self._max = max_uploads
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Upload] = OrderedDict()

    def add(self, blob: Blob, filename: str) -> Upload:
        upload = Upload("video-" + secrets.token_hex(12), blob, filename, int(time.time()))
        with self._lock:
            self._items[upload.id] = upload
            evicted = [self._items.popitem(last=False)[1] for _ in range(max(0, len(self._items) - self._max))]
        for old in evicted:
            self._store.release(old.blob)
        return upload

    def get(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._items.get(upload_id)
        if upload is None:
            raise APIError(404, f"no uploaded video with id {upload_id!r}", param="id", code="video_not_found")
        return upload

    def remove(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._items.pop(upload_id, None)
        if upload is None:
            raise APIError(404, f"no uploaded video with id {upload_id!r}", param="id", code="video_not_found")
        self._store.release(upload.blob)
        return upload

    def list(self) -> list[Upload]:
        with self._lock:
            return list(self._items.values())

    def close(self) -> None:
        for upload in self.list():
            self.remove(upload.id)


def _declared_length(request, limit: int, what: str, slack: int = 0) -> None:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise APIError(400, "invalid Content-Length header")
        if int(length) > limit + slack:
            raise too_large(what, limit)


async def read_body(request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused with a 413 as soon as it passes ``limit`` bytes."""
    _declared_length(request, limit, what)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(what, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_upload(request, store: BlobStore, limit: int) -> tuple[Blob, str]:
    """Stream an upload into the store; returns the checked blob (one reference) and its file name."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    ctype = ctype.decode("latin-1").lower()
    # Multipart adds headers and boundaries around the file: allow a little over the limit here;
    # the file's own bytes are held to the limit exactly by the writer.
    _declared_length(request, limit, "upload", slack=64 * 1024 if ctype == "multipart/form-data" else 0)
    writer = store.writer(limit, "upload")
    try:
        if ctype == "multipart/form-data":
            filename = await _multipart(request, options.get(b"boundary"), writer)
        elif ctype.startswith(("video/", "image/")) or ctype == "application/octet-stream":
            async for chunk in request.stream():
                writer.write(chunk)
            filename = request.headers.get("x-filename", "")
        else:
            raise APIError(400, f"upload Content-Type {ctype or 'missing'}: send multipart/form-data with a 'file' "
                                "field, or the file's bytes as video/*, image/* or application/octet-stream")
        if writer.size == 0:
            raise APIError(400, "the upload is empty", code="invalid_media")
    except BaseException:
        writer.abort()
        raise
    return store.commit(writer, "upload"), filename[:255]


async def _multipart(request, boundary: bytes | None, writer: BlobWriter) -> str:
    if not boundary:
        raise APIError(400, "multipart upload without a boundary")
    state = {"headers": {}, "field": b"", "name": None, "filename": "", "files": 0, "in_file": False}

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["headers"][state["field"].lower()] = state["headers"].get(state["field"].lower(), b"") + data[start:end]

    def on_header_end():
        state["field"] = b""

    def on_headers_finished():
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["in_file"] = opts.get(b"name") == b"file"
        if state["in_file"]:
            state["files"] += 1
            state["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(data, start, end):
        if state["in_file"] and state["files"] == 1:
            writer.write(bytes(data[start:end]))

    def on_part_end():
        state["headers"], state["in_file"] = {}, False

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except APIError:
        raise
    except Exception as exc:
        raise APIError(400, f"malformed multipart upload ({type(exc).__name__})") from None
    if state["files"] != 1:
        raise APIError(400, "multipart upload needs exactly one 'file' field", param="file")
    return state["filename"]
