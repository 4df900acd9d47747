"""The one written contract of the slow-token cross-attention op, and its one loader.

``contract.json`` beside this file names the op, its domain and version, its inputs, outputs and
attributes with types, and its semantics. The exporter, the ONNX function, the TensorRT lint, the
manifest, the tests and the plugin's CMake (which generates ``slowFastCrossAttnSchema.h`` from it)
all read this file; nothing restates it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("contract.json")


@lru_cache(maxsize=1)
def op_schema() -> dict:
    """The parsed contract (read once per process)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
