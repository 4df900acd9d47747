"""manifest.json helpers: checkpoint fingerprint, load and check with rebuild messages."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from slowfast_trt import __version__
from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.export.manifest import (
    FORMAT,
    MANIFEST_NAME,
    check_manifest,
    checkpoint_fingerprint,
    load_manifest,
    subgraph_entry,
    write_manifest,
)
from slowfast_trt.models.slowfast.specs import SubgraphSpec, TensorSpec


def _manifest(**overrides) -> dict:
    schema = op_schema()
    manifest = {
        "format": FORMAT,
        "package_version": __version__,
        "source": {"checkpoint": "ckpt", "hash": "sha256:abc"},
        "precision": "fp16",
        "frames": 16,
        "max_seq_len": 2048,
        "subgraphs": {},
        "custom_op": {"name": schema["name"], "domain": schema["domain"], "op_version": schema["op_version"]},
        "backend": "onnxruntime",
    }
    manifest.update(overrides)
    return manifest


def test_fingerprint_is_stable_and_tracks_config_and_files(tiny_ckpt, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, copy)
    first = checkpoint_fingerprint(copy)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert checkpoint_fingerprint(copy) == first == checkpoint_fingerprint(tiny_ckpt)
    config = json.loads((copy / "config.json").read_text())
    config["rope_theta"] = 10000.0
    (copy / "config.json").write_text(json.dumps(config))
    second = checkpoint_fingerprint(copy)
    assert second != first
    with open(copy / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 16)  # size changes
    third = checkpoint_fingerprint(copy)
    assert third != second
    # Tokenizer files are not part of the hash (the export copies them as they are).
    (copy / "vocab.json").write_text("{}")
    assert checkpoint_fingerprint(copy) == third


def test_fingerprint_sharded_and_bin(tmp_path):
    from slowfast_trt.fixtures.tiny_checkpoint import write_tiny_checkpoint

    sharded = write_tiny_checkpoint(tmp_path / "sharded", shards=2)
    assert checkpoint_fingerprint(sharded).startswith("sha256:")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text("{}")
    torch.save({"w": torch.ones(3)}, binary / "pytorch_model.bin")
    assert checkpoint_fingerprint(binary).startswith("sha256:")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no weight files"):
        checkpoint_fingerprint(empty)


def test_fingerprint_rejects_corrupt_header(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        checkpoint_fingerprint(tmp_path)


def test_load_manifest_round_trip_and_errors(tmp_path):
    write_manifest(tmp_path, _manifest())
    assert load_manifest(tmp_path) == _manifest()
    with pytest.raises(ValueError, match="no manifest.json.*re-export it"):
        load_manifest(tmp_path / "missing")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest.*re-export it"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(ValueError, match="lacks package_version.*re-export it"):
        load_manifest(tmp_path)


def test_an_export_from_before_frame_ranges_says_to_re_export():
    with pytest.raises(ValueError) as info:
        check_manifest(_manifest(format=FORMAT - 1), __version__)
    message = str(info.value)
    assert "every frame count from 1 to --max-frames" in message and "re-export it: python -m slowfast_trt.export" in message
    assert "\n" not in message


def test_check_manifest_passes_and_names_each_mismatch():
    check_manifest(_manifest(), __version__)
    check_manifest(_manifest(), __version__, ckpt_hash="sha256:abc")
    cases = [
        (_manifest(), "9.9.9", None, "made by slowfast_trt 0.1.0, this is slowfast_trt 9.9.9"),
        (_manifest(format=FORMAT + 1), __version__, None, "manifest format"),
        (_manifest(custom_op={"name": "SlowFastCrossAttention", "domain": "slowfast_trt", "op_version": 99}),
         __version__, None, "v99"),
        (_manifest(), __version__, "sha256:other", "checkpoint sha256:abc, the checkpoint given is sha256:other"),
    ]
    for manifest, version, ckpt_hash, fragment in cases:
        with pytest.raises(ValueError, match="re-export it") as info:
            check_manifest(manifest, version, ckpt_hash=ckpt_hash)
        assert fragment in str(info.value)


def test_subgraph_entry_from_spec():
    spec = SubgraphSpec(
        "slow_kv",
        (TensorSpec("slow_tokens", (1, "slow_tokens", 64), "float16"),),
        (TensorSpec("slow_key_0", (1, 2, "slow_tokens", 16), "float16"),),
        "slow_kv.onnx",
        (("slow_tokens", 1, 1296),),
        "slow_kv.onnx.data",
    )
    assert subgraph_entry(spec) == {
        "file": "slow_kv.onnx",
        "inputs": [{"name": "slow_tokens", "shape": [1, "slow_tokens", 64], "dtype": "float16"}],
        "outputs": [{"name": "slow_key_0", "shape": [1, 2, "slow_tokens", 16], "dtype": "float16"}],
        "dims": [["slow_tokens", 1, 1296]],
        "data_file": "slow_kv.onnx.data",
    }
