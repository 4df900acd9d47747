"""``/v1/models``, ``/metrics`` (with the API key), ``/health`` and the web page (without)."""

from __future__ import annotations

import time
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from .errors import APIError

guarded = APIRouter()
public = APIRouter()

_STARTED = int(time.time())
# The page is self-contained: inline script and style, media from this server or local blobs.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "media-src 'self' blob:; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _model(server) -> dict:
    rt = server.runtime
    return {"id": server.config.model_name, "object": "model", "created": _STARTED, "owned_by": "slowfast_trt",
            "max_model_len": rt.max_seq_len, "max_frames": getattr(rt, "max_frames", rt.frames),
            "default_frames": rt.default_frames, "backend": rt.backend}


@guarded.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [_model(request.app.state.server)]}


@guarded.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    server = request.app.state.server
    server.check_model(model_id)
    return _model(server)


@guarded.get("/metrics")
async def metrics(request: Request):
    return PlainTextResponse(request.app.state.server.metrics.render(), media_type="text/plain; version=0.0.4")


@public.get("/health")
async def health(request: Request):
    server = request.app.state.server
    return {"status": "ok", "model": server.config.model_name, "backend": server.runtime.backend,
            "queue_depth": server.scheduler.depth, "auth": server.auth.enabled}


@public.get("/")
async def index():
    try:
        page = resources.files("slowfast_trt.server").joinpath("static/index.html").read_text(encoding="utf-8")
    except OSError:
        raise APIError(500, "the web page is missing from this installation") from None
    return HTMLResponse(page, headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                                       "Referrer-Policy": "no-referrer"})
