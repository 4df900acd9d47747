"""``POST /v1/chat/completions``: check, resolve the media, queue, answer (JSON or SSE)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .conversation import plan_chat
from .engine import ChatWork
from .errors import APIError
from .openai_format import chunk, completion, new_id, sse
from .scheduler import Job
from .schemas import ChatRequest, parse_json_body, parse_model
from .uploads import read_body

router = APIRouter()

_POLL_S = 0.25  # how often a waiting request checks that its client is still there


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    server = request.app.state.server
    body = parse_model(ChatRequest, parse_json_body(await read_body(request, server.body_limit)))
    server.check_model(body.model)
    plan = plan_chat(body, server.config.allow_text_only)
    sampling = _sampling(body, server)
    media = await run_in_threadpool(server.media.resolve, plan.media) if plan.media is not None else None
    work = ChatWork(plan, media, sampling, body.stream)
    try:
        job = server.scheduler.submit(lambda job: server.engine.run(job, work), server.config.request_timeout_s)
    except APIError as exc:
        server.media.release(media)
        if exc.status == 429:
            server.metrics.inc("slowfast_rejected_total")
        raise
    job.on_finish(lambda: server.media.release(media))
    watcher = asyncio.create_task(_watch(request, job, server.scheduler))
    try:
        first = await job.events.get()
    except BaseException:
        job.cancel("disconnect")
        server.scheduler.discard(job)
        watcher.cancel()
        raise
    if first[0] == "error":
        watcher.cancel()
        raise first[1]
    request_id = new_id()
    if not body.stream:
        watcher.cancel()
        return JSONResponse(completion(request_id, body.model, first[1]))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_sse(job, first, watcher, request_id, body.model, include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sampling(body: ChatRequest, server) -> dict:
    from slowfast_trt.sampling import SamplingParams

    seed = body.seed if body.seed is not None else (0 if body.temperature == 0 else None)
    params = dict(max_new_tokens=body.token_limit(server.config.default_max_tokens, server.runtime.max_seq_len),
                  temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                  repetition_penalty=body.repetition_penalty, seed=seed, stop_strings=body.stop_strings())
    try:
        SamplingParams(**params)
    except ValueError as exc:
        raise APIError(422, str(exc)) from None
    return params


async def _watch(request: Request, job: Job, scheduler) -> None:
    """Cancel the job when its client goes away (checked every ``_POLL_S``)."""
    while not job.finished:
        if await request.is_disconnected():
            job.cancel("disconnect")
            scheduler.discard(job)
            return
        await asyncio.sleep(_POLL_S)


async def _sse(job: Job, first, watcher, request_id: str, model: str, include_usage: bool):
    created = int(time.time())
    event = first
    try:
        yield sse(chunk(request_id, model, created, delta={"role": "assistant", "content": ""}))
        while True:
            kind, value = event
            if kind == "piece":
                yield sse(chunk(request_id, model, created, delta={"content": value}))
            elif kind == "done":
                yield sse(chunk(request_id, model, created, finish=value))
                if include_usage:
                    yield sse(chunk(request_id, model, created, usage_of=value))
                break
            else:  # an error after the stream started: OpenAI's clients raise it
                yield sse(value.body())
                break
            event = await job.events.get()
        yield sse("[DONE]")
    finally:
        if not job.finished:
            job.cancel("disconnect")
        watcher.cancel()
