"""Uploads (``/v1/videos``), media-dir files (``/v1/media``) and live streams (``/v1/streams``)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from .errors import APIError
from .media import file_url
from .schemas import StreamRequest, parse_json_body, parse_model
from .security import media_path
from .uploads import read_body, receive_upload

router = APIRouter()

_MEDIA_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_MAX_LISTED = 500


@router.post("/v1/videos")
async def upload_video(request: Request):
    server = request.app.state.server
    blob, filename = await receive_upload(request, server.store, server.config.max_upload_bytes)
    return server.uploads.add(blob, filename).to_json()


@router.get("/v1/videos")
async def list_videos(request: Request):
    return {"object": "list", "data": [u.to_json() for u in request.app.state.server.uploads.list()]}


@router.get("/v1/videos/{video_id}")
async def get_video(video_id: str, request: Request):
    return request.app.state.server.uploads.get(video_id).to_json()


@router.get("/v1/videos/{video_id}/content")
async def video_content(video_id: str, request: Request):
    blob = request.app.state.server.uploads.get(video_id).blob
    return FileResponse(blob.path, media_type="video/mp4" if blob.kind == "video" else None)


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, request: Request):
    upload = request.app.state.server.uploads.remove(video_id)
    return {"id": upload.id, "object": "video", "deleted": True}


@router.get("/v1/media")
async def list_media(request: Request):
    """Video and image files in ``--media-dir`` (not following links out of it)."""
    root = request.app.state.server.config.media_dir
    if root is None:
        return {"object": "list", "data": []}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in _MEDIA_SUFFIXES or name.startswith("."):
                continue
            try:
                real = media_path(root, file_url(path))
            except APIError:
                continue
            found.append({"name": str(path.relative_to(root)), "url": file_url(path), "bytes": real.stat().st_size})
            if len(found) >= _MAX_LISTED:
                return {"object": "list", "data": found, "truncated": True}
    return {"object": "list", "data": found}


@router.get("/v1/media/content")
async def media_content(url: str, request: Request):
    """The bytes of a ``file://`` URL inside ``--media-dir`` (for the web page's player)."""
    return FileResponse(media_path(request.app.state.server.config.media_dir, url))


@router.post("/v1/streams")
async def create_stream(request: Request):
    server = request.app.state.server
    if not server.live.available:
        server.live.describe("")  # raises the 501
    body = parse_model(StreamRequest, parse_json_body(await read_body(request, 1 << 20)))
    return server.live.create(body)


@router.get("/v1/streams/{stream_id}")
async def get_stream(stream_id: str, request: Request):
    return request.app.state.server.live.describe(stream_id)


@router.delete("/v1/streams/{stream_id}")
async def delete_stream(stream_id: str, request: Request):
    return request.app.state.server.live.delete(stream_id)
