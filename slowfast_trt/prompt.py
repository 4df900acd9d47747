"""Prompt text and prompt token ids for the ``qwen_1_5`` (ChatML) template.

This reproduces what upstream Slow-Fast Video MLLM feeds its language model:
``conv_qwen`` with ``SeparatorStyle.CHATML`` in ``llava/conversation.py`` builds the text,
``add_text`` in ``gradio_demo.py`` puts the video placeholder before the question, and
``tokenizer_image_token`` in ``llava/mm_utils.py`` turns the text into ids with the
placeholder replaced by ``VIDEO_TOKEN_ID``. A single-turn prompt reads::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <image>
    What happens in the video?<|im_end|>
    <|im_start|>assistant

and each answered turn continues it with ``{answer}<|im_end|>\\n`` followed by the next
user message and assistant header. Only the first question carries the placeholder: one
video per conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Union

import tokenizers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    AnyTokenizer = Union[PreTrainedTokenizerBase, tokenizers.Tokenizer]

__all__ = [
    "DEFAULT_SYSTEM",
    "END_OF_TEXT",
    "IM_END",
    "IM_START",
    "VIDEO_PLACEHOLDER",
    "VIDEO_TOKEN_ID",
    "ChatTurn",
    "Conversation",
    "PromptTokens",
    "followup_text",
    "stop_token_ids",
    "tokenize_prompt",
]

VIDEO_PLACEHOLDER = "<image>"
"""Text marking where the video features go (upstream ``DEFAULT_IMAGE_TOKEN``)."""

VIDEO_TOKEN_ID = -200
"""Id standing for the video features in prompt ids (upstream ``IMAGE_TOKEN_INDEX``)."""

DEFAULT_SYSTEM = "You are a helpful assistant."
"""System message of the ``qwen_1_5`` template."""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

# Text a user string must not contain: the placeholder would add a second video slot and
# the special tokens would be tokenized as control tokens and rewrite the template
# (prompt injection). <|endoftext|> is included because it also becomes a special token.
_RESERVED = (VIDEO_PLACEHOLDER, IM_START, IM_END, END_OF_TEXT)


def _check_free_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str, got {type(text).__name__}")
    for token in _RESERVED:
        if token in text:
            raise ValueError(f"{name} contains {token!r}, which the prompt template reserves; remove it")
    return text


def _check_question(question: object) -> str:
    if isinstance(question, str) and not question.strip():
        raise ValueError(f"question is empty or only whitespace ({question!r}); expected text to ask")
    return _check_free_text("question", question)


def _message(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def _assistant_header() -> str:
    return f"{IM_START}assistant\n"


@dataclass(frozen=True)
class ChatTurn:
    """One user question and the assistant's answer, ``None`` while it is being generated."""

    question: str
    answer: str | None = None


class Conversation:
    """History of a chat about one video, rendered with the ``qwen_1_5`` template.

    Usage::

        conv = Conversation()
        conv.add_question("What happens in the video?")
        text = conv.prompt_text()          # ends with the assistant header
        conv.set_answer(generated_answer)
        conv.add_question("What color is the cat?")

    Args:
        system: System message; ``""`` leaves the system block out, as upstream does for an
            empty system string.
        has_video: Put ``VIDEO_PLACEHOLDER`` before the first question. ``False`` gives a
            text-only conversation.
        turns: Earlier turns to start from; all but the last must have an answer.
    """

    def __init__(self, system: str = DEFAULT_SYSTEM, has_video: bool = True, turns: Iterable[ChatTurn] = ()):
        self.system = _check_free_text("system", system)
        self.has_video = bool(has_video)
        self._turns: list[ChatTurn] = []
        for turn in turns:
            if not isinstance(turn, ChatTurn):
                raise ValueError(f"turns must hold ChatTurn objects, got {type(turn).__name__}")
            self.add_question(turn.question)
            if turn.answer is not None:
                self.set_answer(turn.answer)

    @property
    def turns(self) -> tuple[ChatTurn, ...]:
        """The turns so far, oldest first."""
        return tuple(self._turns)

    @property
    def awaiting_answer(self) -> bool:
        """Whether the last question has no answer yet."""
        return bool(self._turns) and self._turns[-1].answer is None

    def add_question(self, question: str) -> None:
        """Append a user question; the prompt then ends with the assistant header.

        Raises:
            ValueError: ``question`` is empty, contains ``VIDEO_PLACEHOLDER`` or a special
                token, or the previous question has no answer yet.
        """
        _check_question(question)
        if self.awaiting_answer:
            raise ValueError("the previous question has no answer yet; call set_answer before add_question")
        self._turns.append(ChatTurn(question))

    def set_answer(self, answer: str) -> None:
        """Record the assistant's answer to the last question.

        ``answer`` is the decoded text without the stop token. An empty answer (the model
        stopped at once) is kept as an empty message; upstream would treat it as still
        pending and drop the ``<|im_end|>`` the model did produce.

        Raises:
            ValueError: ``answer`` contains ``VIDEO_PLACEHOLDER`` or a special token, or no
                question is waiting for an answer.
        """
        _check_free_text("answer", answer)
        if not self.awaiting_answer:
            raise ValueError("no question is waiting for an answer; call add_question first")
        self._turns[-1] = ChatTurn(self._turns[-1].question, answer)

    def prompt_text(self) -> str:
        """The whole conversation as template text, ready to tokenize."""
        parts = [_message("system", self.system)] if self.system else []
        for index, turn in enumerate(self._turns):
            question = turn.question
            if index == 0 and self.has_video:
                # Upstream get_prompt strips the first question when it moves the
                # placeholder in front of it; later questions are kept verbatim.
                question = f"{VIDEO_PLACEHOLDER}\n{question.strip()}"
            parts.append(_message("user", question))
            parts.append(_assistant_header())
            if turn.answer is not None:
                parts.append(f"{turn.answer}{IM_END}\n")
        return "".join(parts)


def followup_text(previous_answer: str, question: str) -> str:
    """Text that follows a generated answer to ask the next question.

    For a conversation whose prompt ``p`` ended with the assistant header, recording
    ``previous_answer`` and adding ``question`` gives the prompt
    ``p + previous_answer + followup_text(previous_answer, question)``. It starts with
    ``<|im_end|>``: a runtime that did not feed the sampled stop token back into its KV
    cache appends the ids of this text to the cache and carries on; one that did feeds
    all ids but the first.

    Tokenizing the pieces one by one gives the ids of the whole grown prompt, because the
    special tokens on both sides of the answer cut the text into separately pre-tokenized
    segments. The exception is an answer that begins with whitespace holding a line break:
    in the whole prompt the Qwen2 split regex joins it with the ``\\n`` of the assistant
    header (``"\\n\\n"`` is one token), piece by piece it cannot. A runtime that keeps the
    generated ids in its cache is unaffected; it only differs from upstream, which
    re-tokenizes the whole text every turn, by that one boundary token.

    Raises:
        ValueError: ``question`` is empty, or either argument contains
            ``VIDEO_PLACEHOLDER`` or a special token.
    """
    _check_free_text("previous_answer", previous_answer)
    _check_question(question)
    return f"{IM_END}\n" + _message("user", question) + _assistant_header()


@dataclass(frozen=True)
class PromptTokens:
    """Prompt ids with at most one ``VIDEO_TOKEN_ID`` where the video features go.

    Attributes:
        ids: Token ids; ``VIDEO_TOKEN_ID`` appears once, or not at all for a text-only
            prompt.
        video_index: Position of ``VIDEO_TOKEN_ID`` in ``ids``, or ``None``.
    """

    ids: tuple[int, ...]
    video_index: int | None

    def __post_init__(self) -> None:
        count = self.ids.count(VIDEO_TOKEN_ID)
        if count > 1:
            raise ValueError(f"ids hold {count} VIDEO_TOKEN_ID entries; expected at most one")
        if count == 1 and (self.video_index is None or self.ids[self.video_index] != VIDEO_TOKEN_ID):
            raise ValueError(
                f"video_index is {self.video_index}; expected {self.ids.index(VIDEO_TOKEN_ID)}, "
                "the position of VIDEO_TOKEN_ID in ids"
            )
        if count == 0 and self.video_index is not None:
            raise ValueError(
                f"video_index is {self.video_index} but ids hold no VIDEO_TOKEN_ID; expected None"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def text_ids_before(self) -> tuple[int, ...]:
        """Ids before the video; all ids for a text-only prompt."""
        return self.ids if self.video_index is None else self.ids[: self.video_index]

    @property
    def text_ids_after(self) -> tuple[int, ...]:
        """Ids after the video; empty for a text-only prompt."""
        return () if self.video_index is None else self.ids[self.video_index + 1 :]


def _encode(tokenizer: AnyTokenizer, text: str) -> list[int]:
    # Upstream calls tokenizer(chunk).input_ids: the tokenizer's default special-token
    # handling, which for Qwen2 adds nothing.
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer.encode(text).ids
    return list(tokenizer(text).input_ids)


def tokenize_prompt(tokenizer: AnyTokenizer, text: str) -> PromptTokens:
    """Tokenize prompt text, replacing ``VIDEO_PLACEHOLDER`` by ``VIDEO_TOKEN_ID``.

    Same semantics as upstream ``tokenizer_image_token``: the text is split on the
    placeholder, each chunk is tokenized on its own (so no token spans the placeholder), and
    the chunks are joined with ``VIDEO_TOKEN_ID``. When the first chunk starts with the
    tokenizer's bos token, that bos is kept once and the first id of every later chunk (its
    own bos) is dropped; Qwen2 has no bos token, so this never applies to it.

    Args:
        tokenizer: A transformers tokenizer or a ``tokenizers.Tokenizer``.
        text: Prompt text, e.g. ``Conversation.prompt_text()``.

    Raises:
        ValueError: ``text`` holds more than one ``VIDEO_PLACEHOLDER``.
    """
    chunks = text.split(VIDEO_PLACEHOLDER)
    if len(chunks) > 2:
        raise ValueError(
            f"text contains {len(chunks) - 1} {VIDEO_PLACEHOLDER!r} placeholders; "
            "expected at most one (one video per conversation)"
        )
    encoded = [_encode(tokenizer, chunk) for chunk in chunks]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    offset = 1 if bos_id is not None and encoded[0][:1] == [bos_id] else 0
    ids = list(encoded[0])
    video_index = None
    for chunk_ids in encoded[1:]:
        video_index = len(ids)
        ids.append(VIDEO_TOKEN_ID)
        ids.extend(chunk_ids[offset:])
    return PromptTokens(tuple(ids), video_index)


def _token_id(tokenizer: AnyTokenizer, token: str) -> int | None:
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer.token_to_id(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    # A missing token comes back as the unk id (or None); check the round trip instead.
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
        return None
    return token_id


def stop_token_ids(tokenizer: AnyTokenizer) -> tuple[int, ...]:
    """Ids that end generation: ``<|im_end|>`` (end of turn), then ``<|endoftext|>``.

    Raises:
        ValueError: the tokenizer lacks one of them (not a Qwen2 tokenizer).
    """
    ids = []
    for token in (IM_END, END_OF_TEXT):
        token_id = _token_id(tokenizer, token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token!r} token; expected a Qwen2 tokenizer")
        ids.append(token_id)
    return tuple(ids)
