"""Streaming detokenization: text pieces as tokens arrive, correct for multi-byte characters.

Qwen2's byte-level BPE splits a character of several UTF-8 bytes (CJK, emoji) over several
tokens, and one token may end in the middle of a character. Decoding a token on its own
then gives U+FFFD replacement characters that a later token would have completed. The
:class:`IncrementalDetokenizer` decodes a window of recent tokens and holds back a tail of
replacement characters until the next token completes it (or generation ends), so the
pieces it yields always join to ``tokenizer.decode(all_ids, skip_special_tokens=True)``.

The window starts at the last token boundary where the decoded text ended cleanly (no
pending replacement character), so decoding stays proportional to the tokens of one
character, not to the whole answer.

:class:`StopStringText` sits on top for stop strings: it also holds back the last
``len(longest stop string) - 1`` characters, which could be the start of a stop string, and
never emits text from the first stop string on, matching the runtime's final text.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

__all__ = ["IncrementalDetokenizer", "StopStringText", "TextStream", "stream_text"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into text pieces; see the module docstring.

    Args:
        tokenizer: anything with ``decode(ids, skip_special_tokens=...)``.
        skip_special_tokens: passed to ``decode`` (the runtime's final text skips them).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._start = 0  # first id of the window: a clean boundary
        self._emitted = 0  # characters of the window's text already emitted

    def _window_text(self) -> str:
        return self.tokenizer.decode(self._ids[self._start :], skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Add one token; return the text that is now final ('' while a character is incomplete)."""
        self._ids.append(int(token_id))
        text = self._window_text()
        stable = text.rstrip(_REPLACEMENT)
        piece = stable[self._emitted :] if len(stable) > self._emitted else ""
        if len(stable) == len(text):
            # Clean boundary: restart the window after this token.
            self._start, self._emitted = len(self._ids), 0
        else:
            self._emitted = max(self._emitted, len(stable))
        return piece

    def flush(self) -> str:
        """The held-back tail (replacement characters that nothing completed); resets the window."""
        text = self._window_text()
        piece = text[self._emitted :]
        self._start, self._emitted = len(self._ids), 0
        return piece

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._ids)


class StopStringText:
    """Text pieces with stop strings applied: nothing from the first stop string on is emitted."""

    def __init__(self, stop_strings: Sequence[str] = ()):
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        self._text += piece
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            return self._emit_to(cut)
        return self._emit_to(len(self._text) - self._hold)

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._emit_to(len(self._text))

    def _first_stop(self) -> int | None:
        found = [self._text.find(s) for s in self.stop_strings if s in self._text]
        return min(found) if found else None

    def _emit_to(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        piece = self._text[self._emitted : end]
        self._emitted = end
        return piece


def stream_text(tokenizer, ids: Iterable[int], stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Yield non-empty text pieces of ``ids`` as they arrive, then the held-back tail."""
    detok = IncrementalDetokenizer(tokenizer)
    stops = StopStringText(stop_strings)
    for token in ids:
        piece = stops.add(detok.add(token))
        if piece:
            yield piece
    piece = stops.add(detok.flush()) + stops.flush()
    if piece:
        yield piece


class TextStream:
    """Text pieces of one answer as its tokens are generated; ``result`` once exhausted.

    Args:
        tokens: the generator of token ids (a session's decode loop); closing the stream
            closes it, which stops generation.
        result: called at the end for the full result (``stream.result``).
        on_done: called once when the stream ends or is closed (a one-shot session closes).
    """

    def __init__(self, tokenizer, tokens: Iterator[int], stop_strings: Sequence[str] = (),
                 result: Callable[[], Any] = lambda: None, on_done: Callable[[], None] | None = None):
        self._tokens = tokens
        self._pieces = stream_text(tokenizer, tokens, stop_strings)
        self._result = result
        self._on_done = on_done
        self.result = None

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self.result = self._result()
            self._done()
            raise
        except BaseException:
            self.close()
            raise

    def text(self) -> str:
        """Consume the rest of the stream and return the whole answer."""
        for _ in self:
            pass
        return self.result.text

    def close(self) -> None:
        """Stop generating."""
        self._pieces.close()
        self._tokens.close()
        self._done()

    def _done(self) -> None:
        if self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done()

    def __del__(self):
        try:
            self._done()
        except Exception:
            pass
