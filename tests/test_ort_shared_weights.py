"""``decoder`` and ``decoder_nocross`` on ONNX Runtime (CPU) read one mapping of
``decoder.onnx.data`` (``runtime/ort_shared_weights.py``): the file is mapped once in the
process, the sessions give the same numbers as sessions that load the file themselves, and a
damaged data file is one error naming it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from slowfast_trt.runtime.engine import EngineError
from slowfast_trt.runtime.ort_engine import load_ort_engines


def _files(export):
    return {name: entry["file"] for name, entry in json.loads((export / "manifest.json").read_text())["subgraphs"].items()}


def _mappings(path) -> int:
    """Distinct mappings of ``path`` in this process (one per mmap call)."""
    target = str(path.resolve())
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(target))


def _decoder_feeds(session, seq=5, past=3, slow=7, rows=2):
    """Random decoder inputs: ``rows`` attending rows at the end, every length valid."""
    sizes = {"seq": seq, "past": past, "slow_tokens": slow, "rows": rows}
    fixed = {
        "position_ids": torch.arange(past, past + seq)[None],
        "past_length": torch.tensor([past]),
        "slow_lengths": torch.tensor([slow], dtype=torch.int32),
        "cross_rows": torch.arange(seq - rows, seq),
        "cross_row_offsets": torch.tensor([0, rows], dtype=torch.int32),
    }
    gen = torch.Generator().manual_seed(1)
    feeds = {}
    for arg in session.get_inputs():
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in arg.shape)
        feeds[arg.name] = fixed.get(arg.name, torch.randn(shape, generator=gen))
    return feeds


def test_one_mapping_for_both_decoders(tiny_exports):
    export = tiny_exports("tiny_ckpt")
    data = export / "decoder.onnx.data"
    engines = load_ort_engines(export, _files(export), torch.device("cpu"), 1, ["decoder", "decoder_nocross"])
    try:
        assert _mappings(data) == 1
    finally:
        for engine in engines.values():
            engine.close()


@pytest.mark.parametrize("graph", ["decoder", "decoder_nocross"])
def test_shared_sessions_equal_plain_sessions(tiny_exports, graph):
    export = tiny_exports("tiny_ckpt")
    engines = load_ort_engines(export, _files(export), torch.device("cpu"), 1, [graph])
    options = ort.SessionOptions()  # as the engines, but ONNX Runtime reads the file itself
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.disable_prepacking", "1")
    plain = ort.InferenceSession(str(export / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = _decoder_feeds(plain)
    got = engines[graph].run(feeds)
    want = plain.run(None, {name: tensor.numpy() for name, tensor in feeds.items()})
    for name, expected in zip([o.name for o in plain.get_outputs()], want):
        np.testing.assert_array_equal(got[name].numpy(), expected, err_msg=name)
    engines[graph].close()


def test_truncated_data_file_is_one_error_naming_it(tiny_exports, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_exports("tiny_ckpt"), export)
    data = export / "decoder.onnx.data"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(EngineError, match=r"decoder: cannot map the weights .*decoder\.onnx\.data"):
        load_ort_engines(export, _files(export), torch.device("cpu"), 1, ["decoder"])
