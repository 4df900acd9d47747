"""Streaming detokenization: pieces join to the full decode, no broken characters, stop strings."""

import random

import pytest

from slowfast_trt.detokenize import IncrementalDetokenizer, StopStringText, stream_text

TEXT = "héllo 你好 🎉 wörld, the cat 🐈‍⬛ sits. Ünïcödé ✓"


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpt):
    from slowfast_trt.tokenizer import load_tokenizer

    return load_tokenizer(tiny_ckpt)


def test_multibyte_characters_are_held_back_until_complete(tokenizer):
    ids = tokenizer(TEXT).input_ids
    # The byte-level tokenizer splits these characters over several tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # streamed, not emitted all at the end


def test_random_token_sequences_join_to_the_full_decode(tokenizer):
    rng = random.Random(0)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    for _ in range(200):
        ids = [rng.choice(vocab + list(special)) for _ in range(rng.randint(1, 30))]
        pieces = list(stream_text(tokenizer, ids))
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
        assert all(pieces)


def test_window_restarts_at_clean_boundaries(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    for i in tokenizer(" the cat" * 50).input_ids:
        detok.add(i)
    assert detok._start == len(detok.ids)  # nothing pending: the next decode starts fresh


def test_stop_strings_never_emit_past_the_stop(tokenizer):
    ids = tokenizer("The cat sits. STOP here and more").input_ids
    pieces = list(stream_text(tokenizer, ids, stop_strings=("STOP", "zzz")))
    assert "".join(pieces) == "The cat sits. "
    text = StopStringText(("ab",))
    assert text.add("xa") == "x" and text.add("c") == "a" and text.add("ab") == "c" and text.stopped
    assert StopStringText().add("abc") == "abc"
