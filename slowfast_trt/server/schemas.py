"""Request bodies of the OpenAI-compatible endpoints (pydantic), and their one-line errors.

Unknown top-level fields are ignored, as vLLM does, so clients that send OpenAI options we
do not use keep working; options we cannot honour (``n`` > 1, penalties, logprobs) are
refused rather than silently dropped. Schema violations are 422 with the field's path.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError

__all__ = ["ChatRequest", "StreamRequest", "parse_json_body", "parse_model"]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MediaURL(_Loose):
    """``{"url": ..., "nframes": N, "fps": F, "start": S, "end": E}`` (frame selection for videos)."""

    url: str | None = None
    nframes: int | None = Field(None, ge=1, le=4096)
    fps: float | None = Field(None, gt=0, le=1000)
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, gt=0)


class TextPart(_Loose):
    type: Literal["text"]
    text: str


class VideoPart(_Loose):
    type: Literal["video_url"]
    video_url: MediaURL | None = None


class ImagePart(_Loose):
    type: Literal["image_url"]
    image_url: MediaURL | None = None


Part = Annotated[Union[TextPart, VideoPart, ImagePart], Field(discriminator="type")]


class Message(_Loose):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Loose):
    include_usage: bool = False


class ChatRequest(_Loose):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # vLLM extension
    repetition_penalty: float = Field(1.0, gt=0, le=10)  # vLLM extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    presence_penalty: float = Field(0.0, ge=0, le=0)
    frequency_penalty: float = Field(0.0, ge=0, le=0)
    logprobs: Literal[False] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(422, "stop: at most 4 non-empty strings", param="stop")
        return tuple(stops)

    def token_limit(self, default: int, maximum: int) -> int:
        value = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if value is None:
            return min(default, maximum)
        if value > maximum:
            raise APIError(422, f"max_tokens must be <= {maximum} (the model's context length), got {value}",
                           param="max_tokens")
        return value


class StreamRequest(_Loose):
    """``POST /v1/streams``: a live source and how many recent frames the model sees."""

    source: str = Field(min_length=1)
    window: int | None = Field(None, ge=1, le=4096)  # default: the runtime's (its default frames)
    policy: Literal["recent", "uniform"] = "recent"
    fps: float | None = Field(None, gt=0, le=1000)  # keep one frame per 1 / fps seconds


def parse_json_body(raw: bytes) -> object:
    """JSON of a request body; malformed JSON is a 400 naming where it broke."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise APIError(400, "request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"malformed JSON in request body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def parse_model(cls: type[BaseModel], data: object) -> BaseModel:
    """Validate ``data`` as ``cls``; the first schema error becomes a one-line 422."""
    if not isinstance(data, dict):
        raise APIError(422, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        message, param = _first_error(exc)
        raise APIError(422, message, param=param) from None


def _first_error(exc: ValidationError) -> tuple[str, str | None]:
    # A value that fits no member of a union (content: str | list of parts) gets one error per
    # member; the deepest one says what is wrong with the parts, so report that one.
    errors = exc.errors(include_url=False)
    err = max(errors, key=lambda e: (e["type"] == "union_tag_invalid", len(_path(e["loc"]))))
    loc = _path(err["loc"])
    if err["type"] == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag")
        msg = f"unknown content type {tag!r} (expected text, video_url or image_url)"
    else:
        msg = err["msg"]
    return (f"{loc}: {msg}" if loc else msg), (loc or None)


def _path(loc) -> str:
    # pydantic names the union member it tried inside the location: "str", "list[...]", and
    # a content part's tag right after its index; none of them is a field of the request.
    parts = []
    for i, p in enumerate(loc):
        if isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p):
            continue
        if i and isinstance(loc[i - 1], int) and p in ("text", "video_url", "image_url") and i + 1 < len(loc):
            continue
        parts.append(str(p))
    return ".".join(parts)
