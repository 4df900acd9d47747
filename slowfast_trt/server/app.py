"""The FastAPI application: the server's parts wired together, error handlers, auth.

``create_app(runtime, config)`` returns an app that serves one loaded ``SlowFastRuntime``.
Routes live in ``routes_chat`` (chat completions), ``routes_media`` (uploads, media-dir
files, live streams) and ``routes_info`` (models, health, metrics, the web page).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .blobs import BlobStore
from .config import ServerConfig
from .engine import ChatEngine
from .errors import APIError, error_body
from .media import MediaResolver
from .metrics import Metrics
from .scheduler import Scheduler
from .security import BearerAuth
from .streams import LiveStreams
from .uploads import UploadRegistry

__all__ = ["Server", "create_app"]

log = logging.getLogger("slowfast_trt.server")


class Server:
    """Everything one serving process holds besides the web framework."""

    def __init__(self, runtime, config: ServerConfig):
        self.runtime = runtime
        self.config = config
        self.metrics = Metrics()
        self.auth = BearerAuth(config.api_key)
        self._own_dir = config.data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="slowfast-serve-")) if self._own_dir else Path(config.data_dir)
        self.store = BlobStore(self.data_dir / "media")
        self.uploads = UploadRegistry(self.store, config.max_uploads)
        self.media = MediaResolver(config, self.store, self.uploads)
        self.scheduler = Scheduler(config.max_queue,
                                   on_cancel=lambda reason: self.metrics.inc("slowfast_cancelled_total", reason=reason))
        self.live = LiveStreams(runtime, self.scheduler.call, config, self.store, self.uploads)
        self.engine = ChatEngine(runtime, config, self.metrics, self.live)
        # JSON bodies carry base64 media: 4 characters per 3 bytes, plus the rest of the request.
        self.body_limit = config.max_upload_bytes * 4 // 3 + (1 << 20)
        m, e = self.metrics, self.engine
        m.gauge("slowfast_queue_depth", "Requests waiting for the model", lambda: self.scheduler.depth)
        m.gauge("slowfast_running", "Requests being generated (0 or 1)", lambda: int(self.scheduler.running is not None))
        m.gauge("slowfast_video_cache_bytes", "Bytes of encoded videos in the cache", lambda: e.videos.bytes)
        m.gauge("slowfast_video_cache_entries", "Encoded videos in the cache", lambda: len(e.videos))
        m.gauge("slowfast_sessions", "Conversations kept for follow-ups", lambda: len(e.sessions))
        m.gauge("slowfast_media_bytes", "Bytes of uploaded and fetched media on disk", lambda: self.store.bytes_stored)

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise APIError(404, f"model {name!r} not found: this server serves {self.config.model_name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    def close(self) -> None:
        self.scheduler.close()  # the model thread is gone after this: safe to free from here
        try:
            self.live.close()
        except Exception:
            log.exception("closing live streams failed")
        self.engine.close()
        self.uploads.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def create_app(runtime, config: ServerConfig, *, close_runtime: bool = False) -> FastAPI:
    """The ASGI app serving ``runtime``; ``close_runtime`` closes it at shutdown too."""
    server = Server(runtime, config.check())

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()
        if close_runtime:
            runtime.close()

    app = FastAPI(title="slowfast_trt", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server
    _install_errors(app, server.metrics)
    app.add_middleware(_CountRequests, metrics=server.metrics)

    async def require_key(request: Request) -> None:
        server.auth.check(request.headers.get("authorization"))

    from . import routes_chat, routes_info, routes_media

    guarded = [Depends(require_key)]
    app.include_router(routes_chat.router, dependencies=guarded)
    app.include_router(routes_media.router, dependencies=guarded)
    app.include_router(routes_info.guarded, dependencies=guarded)
    app.include_router(routes_info.public)
    return app


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _install_errors(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        metrics.inc("slowfast_errors_total", status=str(exc.status))
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        metrics.inc("slowfast_errors_total", status="422")
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(error_body(422, f"{loc}: {first.get('msg')}" if loc else first.get("msg"), param=loc or None),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        metrics.inc("slowfast_errors_total", status=str(exc.status_code))
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        metrics.inc("slowfast_errors_total", status="500")
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal server error (see the server log)"), status_code=500)


class _CountRequests:
    """Pure ASGI middleware: count requests by route template and status (streaming-safe)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.inc("slowfast_requests_total", route=path, status=str(status["code"]))
