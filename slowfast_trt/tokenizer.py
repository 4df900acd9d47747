"""Loading the checkpoint's Qwen2 tokenizer with transformers (config.json we parse ourselves)."""

from __future__ import annotations

import warnings
from pathlib import Path


def load_tokenizer(directory: str | Path):
    """The tokenizer in a checkpoint directory; a ValueError naming the folder if it cannot load."""
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
        raise ValueError(f"{directory}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    finally:
        hf_logging.set_verbosity(level)
