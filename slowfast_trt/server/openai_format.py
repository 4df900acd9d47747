"""Responses in OpenAI's chat-completion format, and Server-Sent Events for streaming.

Besides OpenAI's fields, a completion carries ``timings`` (milliseconds of each stage and
decode tokens/s) and ``slowfast`` (whether the video and the conversation came from the
caches); ``usage.prompt_tokens_details.cached_tokens`` counts the prompt rows reused from a
cached conversation, as OpenAI reports prompt caching.
"""

from __future__ import annotations

import json
import secrets
import time

from .engine import ChatOutcome

__all__ = ["FINISH_REASONS", "chunk", "completion", "new_id", "sse", "usage"]

FINISH_REASONS = {"stop": "stop", "stop_string": "stop", "length": "length"}


def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(outcome: ChatOutcome) -> dict:
    completion = len(outcome.token_ids)
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": completion,
            "total_tokens": outcome.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens}}


def _extras(outcome: ChatOutcome) -> dict:
    return {"timings": outcome.timings_ms,
            "slowfast": {"video_cache_hit": outcome.video_cache_hit, "session_cache_hit": outcome.session_cache_hit,
                         **outcome.extra}}


def completion(request_id: str, model: str, outcome: ChatOutcome) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text},
                     "finish_reason": FINISH_REASONS.get(outcome.finish_reason, "stop"), "logprobs": None}],
        "usage": usage(outcome), **_extras(outcome),
    }


def chunk(request_id: str, model: str, created: int, delta: dict | None = None, finish: ChatOutcome | None = None,
          usage_of: ChatOutcome | None = None) -> dict:
    """One ``chat.completion.chunk``: a delta, the finishing chunk, or the usage-only chunk."""
    body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage_of is not None:
        return body | {"choices": [], "usage": usage(usage_of)}
    reason = FINISH_REASONS.get(finish.finish_reason, "stop") if finish is not None else None
    body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": reason, "logprobs": None}]
    if finish is not None:
        body |= _extras(finish)
    return body


def sse(data: dict | str) -> str:
    """One event: ``data: <json>`` and a blank line (``[DONE]`` as is)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
