"""The tiny Qwen2 tokenizer generator writes loadable, deterministic Qwen2-format files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import unicodedata

import pytest
from tokenizers import Tokenizer
from tokenizers.models import BPE
from transformers import AutoTokenizer

from slowfast_trt.fixtures.tiny_tokenizer import SPECIAL_TOKENS, write_tiny_qwen2_tokenizer

FILES = ("merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")

# Multi-byte UTF-8 (2, 3 and 4 bytes per character), none of it in the training corpus.
UNICODE_TEXT = "café 東京 🎥"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_qwen2")
    length = write_tiny_qwen2_tokenizer(directory)
    return directory, length


def test_writes_the_qwen2_file_set(tokenizer_dir):
    directory, _ = tokenizer_dir
    assert sorted(path.name for path in directory.iterdir()) == sorted(FILES)


def test_length_and_special_token_ids(tokenizer_dir):
    directory, length = tokenizer_dir
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    base = raw.get_vocab_size(with_added_tokens=False)
    assert 300 <= length <= 600
    assert length == base + 3
    # Like Qwen2 (151643, 151644, 151645): right after the learned vocabulary, in this order.
    assert [raw.token_to_id(token) for token in SPECIAL_TOKENS] == [base, base + 1, base + 2]
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def test_output_is_identical_on_every_call(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert write_tiny_qwen2_tokenizer(first) == write_tiny_qwen2_tokenizer(second)
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_config_matches_qwen2_instruct(tokenizer_dir):
    directory, length = tokenizer_dir
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"] is None
    assert config["model_max_length"] == 32768
    assert config["errors"] == "replace"
    assert config["split_special_tokens"] is False
    assert config["add_prefix_space"] is False
    assert "chat_template" in config
    decoder = {int(index): entry["content"] for index, entry in config["added_tokens_decoder"].items()}
    assert decoder == {length - 3 + offset: token for offset, token in enumerate(SPECIAL_TOKENS)}


def test_auto_tokenizer_loads_offline(tokenizer_dir):
    # Offline mode is read when transformers is imported, so check it in a fresh process.
    directory, length = tokenizer_dir
    script = textwrap.dedent(
        f"""
        import json
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(directory)!r})
        print(json.dumps([type(tok).__name__, len(tok), tok.eos_token_id, tok.pad_token_id]))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    name, loaded_length, eos_id, pad_id = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "Qwen2Tokenizer"
    assert loaded_length == length
    assert (eos_id, pad_id) == (length - 1, length - 3)


def test_auto_tokenizer_properties(tokenizer_dir):
    directory, length = tokenizer_dir
    tok = AutoTokenizer.from_pretrained(directory)
    assert len(tok) == length
    assert tok.bos_token is None
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.model_max_length == 32768


@pytest.mark.parametrize(
    "text",
    [UNICODE_TEXT, "What happens in the video?", "  two spaces, tabs\tand\n\nblank lines\n", "e\u0301 123 x"],
)
def test_encode_decode_round_trip(tokenizer_dir, text):
    directory, _ = tokenizer_dir
    tok = AutoTokenizer.from_pretrained(directory)
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = tok(text).input_ids
    assert ids == raw.encode(text).ids
    # NFC normalization, as in Qwen2: "e" + combining acute comes back as one "é".
    expected = unicodedata.normalize("NFC", text)
    assert tok.decode(ids) == expected
    assert raw.decode(ids) == expected


def test_unicode_text_falls_back_to_byte_tokens(tokenizer_dir):
    directory, _ = tokenizer_dir
    tok = AutoTokenizer.from_pretrained(directory)
    ids = tok(UNICODE_TEXT).input_ids
    # Unseen characters become one token per UTF-8 byte; nothing maps to an unknown token.
    assert len(ids) > len(UNICODE_TEXT)
    assert all(0 <= token_id < 256 for token_id in tok("東京🎥").input_ids)


def test_special_tokens_are_never_split(tokenizer_dir):
    directory, length = tokenizer_dir
    tok = AutoTokenizer.from_pretrained(directory)
    ids = tok("<|im_start|>user\nhi<|im_end|><|endoftext|>").input_ids
    assert ids[0] == length - 2
    assert ids[-2:] == [length - 1, length - 3]
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_learned_words_are_single_tokens(tokenizer_dir):
    directory, _ = tokenizer_dir
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for word in (" video", " frame", " cat", " describe", "What", " happens", "assistant", "\n\n"):
        assert len(raw.encode(word).ids) == 1, word


def test_vocab_and_merges_files_agree_with_tokenizer_json(tokenizer_dir, tmp_path):
    directory, _ = tokenizer_dir
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    from_files = Tokenizer(BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    from_files.normalizer = raw.normalizer
    from_files.pre_tokenizer = raw.pre_tokenizer
    text = "Describe what happens in the video, frame by frame. " + UNICODE_TEXT
    assert from_files.encode(text).ids == raw.encode(text).ids

    # Without tokenizer.json, transformers builds the tokenizer from vocab.json + merges.txt
    # (the only files older slow Qwen2 tokenizers read); the ids must not change.
    for name in FILES:
        if name != "tokenizer.json":
            shutil.copy(directory / name, tmp_path / name)
    text = "<|im_start|>user\n" + text + "<|im_end|>"
    full = AutoTokenizer.from_pretrained(directory)
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == full(text).input_ids


def test_folders_without_a_usable_tokenizer_give_one_line(tokenizer_dir, tmp_path):
    from slowfast_trt.tokenizer import load_tokenizer

    with pytest.raises(ValueError, match=r"no tokenizer files \(tokenizer.json, or vocab.json and merges.txt\)") as err:
        load_tokenizer(tmp_path)  # e.g. run --ckpt pointed at the wrong folder
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken"
    shutil.copytree(tokenizer_dir[0], broken)
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "vocab.json").unlink()
    with pytest.raises(ValueError, match="broken: cannot load the tokenizer") as err:
        load_tokenizer(broken)
    assert "\n" not in str(err.value)
