"""LongVU's ``qwen`` conversation template and its stop tokens.

``longvu/conversation.py`` ``conv_qwen`` (``SeparatorStyle.CHATML``, system
``"<|im_start|>system\\nYou are a helpful assistant."``, sep ``<|im_end|>``) with the README's
``qs = "<image>" + "\\n" + question``::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <image>
    {question}<|im_end|>
    <|im_start|>assistant

The question is used verbatim (the Slow-Fast ``qwen_1_5`` template strips it). Tokenisation is
the shared ``tokenize_prompt`` (upstream ``tokenizer_image_token``: each side of ``<image>``
tokenized on its own, joined by ``-200``; Qwen2 adds no BOS), so the ``"\\n"`` after the
placeholder starts the second piece.

Stop (quirk 18): upstream generates without a ``generation_config.json``, so the config's
``eos_token_id`` (151645, ``<|im_end|>``) and ``KeywordsStoppingCriteria(["<|im_end|>"])`` end it;
``<|endoftext|>`` does **not** stop LongVU (it does stop Slow-Fast).
"""

from __future__ import annotations

from slowfast_trt.prompt import IM_END, IM_START, VIDEO_PLACEHOLDER, Conversation

__all__ = ["LongVUConversation", "TEMPLATE", "longvu_stop_ids"]

TEMPLATE = "qwen"


class LongVUConversation(Conversation):
    """:class:`slowfast_trt.prompt.Conversation` rendered with LongVU's ``qwen`` template."""

    def prompt_text(self) -> str:
        parts = [f"{IM_START}system\n{self.system}{IM_END}\n"] if self.system else []
        for index, turn in enumerate(self.turns):
            question = f"{VIDEO_PLACEHOLDER}\n{turn.question}" if index == 0 and self.has_video else turn.question
            parts.append(f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n")
            if turn.answer is not None:
                parts.append(f"{turn.answer}{IM_END}\n")
        return "".join(parts)


def longvu_stop_ids(tokenizer, eos_token_id: int | None) -> tuple[int, ...]:
    """``<|im_end|>`` and the config's ``eos_token_id`` (the same id in the release)."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end is None or tokenizer.convert_ids_to_tokens(im_end) != IM_END:
        raise ValueError(f"tokenizer has no {IM_END!r} token; expected a Qwen2 tokenizer")
    return tuple(dict.fromkeys(i for i in (im_end, eos_token_id) if i is not None))
