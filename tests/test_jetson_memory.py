"""Jetson memory budget: parameter counts against the upstream 7B manifest, the byte formulas,
which precisions fit, the decode ceiling, and the CLI on a checkpoint and an export manifest."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from slowfast_trt.tools import jetson_memory as J
from slowfast_trt.models.slowfast.config import SlowFastConfig

MANIFEST = Path(__file__).parent / "data" / "param_manifest_7b.json"
GIB = 1 << 30


@pytest.fixture(scope="module")
def upstream():
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def ckpt_7b(upstream, tmp_path_factory):
    """A folder with only the released 64-frame checkpoint's config.json."""
    directory = tmp_path_factory.mktemp("ckpt7b")
    config = upstream["config"]
    (directory / "config.json").write_text(json.dumps(config if isinstance(config, dict) else ast.literal_eval(config)))
    return directory


@pytest.fixture(scope="module")
def sizes(ckpt_7b):
    return J.model_sizes(SlowFastConfig.from_file(ckpt_7b / "config.json"), vocab_rows=J.QWEN2_TOKENIZER_LEN)


def test_parameter_counts_match_the_upstream_manifest(ckpt_7b, upstream):
    config = SlowFastConfig.from_file(ckpt_7b / "config.json")
    s = J.model_sizes(config, vocab_rows=152064)  # the checkpoint's rows, before the resize
    groups = upstream["param_groups_numel"]
    h, hybrid = s.hidden, s.hybrid_layers
    lm_head = 152064 * h
    gates = hybrid * (h + 2)  # gate_proj weight + bias, warm-up gate
    assert s.decoder_linear + s.decoder_other - lm_head - gates + s.embed == groups["qwen2 decoder (incl. embed/norm)"]
    assert lm_head == groups["lm_head"]
    assert s.slow_kv - hybrid * h + gates == groups["cross_attn (hybrid-only params)"]  # slow_kv holds the norm, not the gate
    assert s.projector == groups["mm_projector"]
    head = 3072 * 1000 + 1000 + 2 * 3072  # the tower's unused classifier head and its norm (not exported)
    assert s.vision + head == groups["vision_tower (ConvNeXt-XXL)"]


def test_byte_formulas(sizes):
    b16 = J.budget(sizes, "fp16", fast_tokens=1296, max_seq_len=4096)
    b4 = J.budget(sizes, "int4-awq", fast_tokens=1296, max_seq_len=4096)
    assert b16["kv_cache"] == 2 * 28 * 4096 * 4 * 128 * 2  # K and V, 28 layers, fp16
    assert b16["slow_kv_64"] == 5184 * 4 * 2 * 4 * 128 * 2 and b16["slow_kv_96"] == 7776 * 4 * 2 * 4 * 128 * 2
    other = 2 * sizes.decoder_other
    assert b16["weights_by_engine"]["decoder"] == 2 * sizes.decoder_linear + other
    assert b4["weights_by_engine"]["decoder"] == sizes.decoder_linear // 2 + 2 * (sizes.decoder_linear // 128) + other
    assert b4["weights_by_engine"]["vision"] == b16["weights_by_engine"]["vision"]  # the tower stays fp16
    assert b16["prefill_rows"] == 1296 + 512
    nocross = J.budget(sizes, "fp16", fast_tokens=1296, with_nocross=True)
    assert nocross["weights_by_engine"]["decoder"] == 2 * b16["weights_by_engine"]["decoder"]
    assert 14.3e9 < b16["bytes_per_token"] < 14.5e9 and 4.6e9 < b4["bytes_per_token"] < 4.8e9  # weights + KV at 4096


def test_which_precisions_fit_and_decode_ceiling(sizes):
    rows = {(r["device"], r["precision"]): r for r in J.device_rows(sizes, fast_tokens=1296)}
    fits = {key for key, r in rows.items() if r["fits"]}
    assert fits == {("AGX Orin 64GB", "fp16"), ("AGX Orin 64GB", "int4-awq"), ("AGX Orin 32GB", "fp16"),
                    ("AGX Orin 32GB", "int4-awq"), ("Orin NX 16GB", "int4-awq")}
    agx = rows[("AGX Orin 64GB", "int4-awq")]
    assert agx["decode_ceiling_tok_s"] == pytest.approx(204.8e9 / agx["bytes_per_token"])
    assert rows[("Orin Nano 8GB", "int4-awq")]["decode_ceiling_tok_s"] < rows[("Orin NX 16GB", "int4-awq")]["decode_ceiling_tok_s"]
    table = J.format_table(list(rows.values()))
    assert "AGX Orin 64GB" in table and "int4-awq" in table


def test_cli_on_a_checkpoint_and_on_an_export_manifest(ckpt_7b, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert J.main(["--ckpt", str(ckpt_7b), "--json", str(out)]) == 0
    assert "Orin NX 16GB" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert len(data["rows"]) == len(J.DEVICES) * len(J.PRECISIONS) and data["sizes"]["layers"] == 28
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text((ckpt_7b / "config.json").read_text())
    (export / "manifest.json").write_text(json.dumps({"vocab_rows": 151646, "max_seq_len": 8192, "frames": 96}))
    assert J.main(["--manifest", str(export / "manifest.json"), "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert (row["max_seq_len"], row["frames"]) == (8192, 96)
    assert J.main(["--ckpt", str(tmp_path / "missing")]) == 2
