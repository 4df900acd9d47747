"""Turn OpenAI chat messages into what the runtime asks: a system text, one video, the
earlier turns and the new question.

The model's template has one video per conversation, in front of the first question, so
the video (or image) part must be in the first user message; text parts of a message are
joined with a newline. Messages alternate user / assistant after optional system messages
and end with the user's new question.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import APIError
from .schemas import ChatRequest, ImagePart, MediaURL, TextPart, VideoPart

__all__ = ["ChatPlan", "MediaPart", "plan_chat"]


@dataclass(frozen=True)
class MediaPart:
    """A video or image the conversation is about, before its URL is resolved."""

    kind: str  # "video" or "image"
    url: str
    nframes: int | None = None
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    param: str = ""


@dataclass(frozen=True)
class ChatPlan:
    system: str | None
    media: MediaPart | None
    history: tuple[tuple[str, str], ...]  # (question, answer) of the earlier turns
    question: str


def plan_chat(request: ChatRequest, allow_text_only: bool) -> ChatPlan:
    """The conversation a request describes; a 400 names the message that breaks the rules."""
    messages = request.messages
    systems, index = [], 0
    while index < len(messages) and messages[index].role in ("system", "developer"):
        systems.append(_text(messages[index].content, f"messages.{index}"))
        index += 1
    media, users, answers = None, [], []
    for i in range(index, len(messages)):
        message, param = messages[i], f"messages.{i}"
        expected = "user" if (i - index) % 2 == 0 else "assistant"
        if message.role != expected:
            raise APIError(400, f"{param}: expected a {expected} message (after system messages, user and "
                                f"assistant alternate, starting with user), got {message.role}", param=param)
        if expected == "user":
            found = _media(message.content, param)
            if found is not None and users:
                raise APIError(400, f"{param}: a video or image must be in the first user message "
                                    "(one per conversation)", param=param)
            media = found or media
            users.append(_text(message.content, param, media_ok=True))
        else:
            answers.append(_text(message.content, param))
    if not users or len(users) != len(answers) + 1:
        raise APIError(400, "the last message must be the user's question", param="messages")
    if media is None and not allow_text_only:
        raise APIError(400, "no video in this conversation: put a video_url (or image_url) part in the first user "
                            "message (text-only chats need the server's --allow-text-only)", param="messages",
                       code="video_required")
    if not users[-1].strip():
        raise APIError(400, f"messages.{len(messages) - 1}: the question has no text", param="messages")
    system = "\n".join(systems) if systems else None
    return ChatPlan(system, media, tuple(zip(users[:-1], answers)), users[-1])


def _text(content, param: str, media_ok: bool = False) -> str:
    if content is None:
        raise APIError(400, f"{param}: content is missing", param=f"{param}.content")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif not media_ok:
            raise APIError(400, f"{param}.content.{j}: only text parts are allowed here", param=f"{param}.content.{j}")
    return "\n".join(texts)


def _media(content, param: str) -> MediaPart | None:
    if not isinstance(content, list):
        return None
    found = None
    for j, part in enumerate(content):
        if not isinstance(part, (VideoPart, ImagePart)):
            continue
        where = f"{param}.content.{j}"
        if found is not None:
            raise APIError(400, f"{where}: one video or image per conversation", param=where)
        kind = "video" if isinstance(part, VideoPart) else "image"
        ref: MediaURL | None = part.video_url if kind == "video" else part.image_url
        if ref is None or not (ref.url or "").strip():
            raise APIError(400, f"{where}: the {part.type} part has no url (no video to answer about)",
                           param=f"{where}.{part.type}.url", code="video_required")
        if ref.start is not None and ref.end is not None and ref.end <= ref.start:
            raise APIError(400, f"{where}: end ({ref.end}) must be after start ({ref.start})", param=where)
        found = MediaPart(kind, ref.url.strip(), ref.nframes, ref.fps, ref.start, ref.end, where)
    return found
