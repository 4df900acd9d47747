"""Loading the checkpoint's Qwen2 tokenizer with transformers (config.json we parse ourselves)."""

from __future__ import annotations

import warnings
from pathlib import Path


# What a Qwen2 tokenizer loads from: the fast tokenizer file, or the BPE vocabulary and merges.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def load_tokenizer(directory: str | Path):
    """The tokenizer in a checkpoint directory; a one-line ValueError naming the folder if it cannot load."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file() and not all((directory / f).is_file() for f in TOKENIZER_FILES[1:]):
        raise ValueError(
            f"{directory}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt); "
            "expected a Slow-Fast checkpoint or export folder"
        )
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    # AutoTokenizer also reads config.json and warns that it does not know our model_type;
    # that is expected (the tokenizer class comes from tokenizer_config.json), so keep quiet.
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"  # transformers' are multi-line
        raise ValueError(f"{directory}: cannot load the tokenizer ({type(exc).__name__}: {detail})") from None
    finally:
        hf_logging.set_verbosity(level)
