import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from slowfast_trt.models.slowfast.checkpoint import build_model, load_model
from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.convnext import ConvNeXtSpec
from slowfast_trt.fixtures.tiny_checkpoint import write_tiny_checkpoint
from slowfast_trt.models.slowfast.weight_names import plan_mapping, vision_relative_shapes

from test_config import MANIFEST


def manifest():
    data = json.loads(MANIFEST.read_text())
    return data, {p["name"]: tuple(p["shape"]) for p in data["params"]}


def test_manifest_7b_maps_every_tensor_on_meta():
    data, shapes = manifest()
    assert len(shapes) == data["n_tensors"] == 743
    config = SlowFastConfig.from_dict(data["config"])
    rows = data["post_load_vocab_rows"]  # 151646: upstream resizes to len(tokenizer) at load
    model = build_model(config, shapes, vocab_rows=rows, device="meta")
    assert model.vision.spec == ConvNeXtSpec((3, 4, 30, 3), (384, 768, 1536, 3072), 7, 4, 4, True)
    model_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    report = plan_mapping(shapes, model_shapes, {"embed_tokens.weight": rows, "decoder.lm_head.weight": rows})
    assert report.ok, report.error_message("manifest")
    assert len(report.mapping) + len(report.ignored) == 743
    assert all(".head." in name for name in report.ignored) and len(report.ignored) == 4
    assert set(report.mapping.values()) == set(model_shapes)
    assert model_shapes["embed_tokens.weight"] == (151646, 3584) == model_shapes["decoder.lm_head.weight"]
    total = sum(torch.Size(s).numel() for s in model_shapes.values())
    unused_head = sum(torch.Size(shapes[n]).numel() for n in report.ignored)
    assert total == data["total_params"] - 2 * (152064 - rows) * 3584 - unused_head


def test_manifest_mis_shaped_tensor_is_named():
    data, shapes = manifest()
    config = SlowFastConfig.from_dict(data["config"])
    model = build_model(config, shapes, device="meta")
    shapes["model.layers.8.self_attn.cross_attn_kv_proj.weight"] = (512, 3584)
    report = plan_mapping(shapes, {n: tuple(p.shape) for n, p in model.named_parameters()})
    assert not report.ok
    assert "model.layers.8.self_attn.cross_attn_kv_proj.weight [512, 3584] (expected [1024, 3584])" in report.mis_shaped


def test_vision_spec_from_tiny_checkpoint(tiny_ckpt):
    shapes = {k: tuple(v.shape) for k, v in load_file(tiny_ckpt / "model.safetensors").items()}
    spec = ConvNeXtSpec.from_shapes(vision_relative_shapes(shapes))
    assert spec.depths == (1, 1, 2, 1) and spec.dims == (16, 24, 32, 48) and spec.stride == 32


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_sharded_equals_single_and_dtypes(tiny_ckpt, tmp_path):
    sharded = write_tiny_checkpoint(tmp_path / "sharded", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = _params(load_model(tiny_ckpt)), _params(load_model(sharded))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    half = load_model(tiny_ckpt, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    # The fixture stores bf16, so the bf16 load is exact.
    assert torch.equal(half.decoder.layers[0].q_proj.weight.float(), a["decoder.layers.0.q_proj.weight"])


def test_vocab_resize_keeps_leading_rows(tiny_ckpt):
    full = load_model(tiny_ckpt)
    cfg_rows = full.config.text.vocab_size
    resized = load_model(tiny_ckpt, vocab_rows=cfg_rows - 37)
    assert resized.embed_tokens.weight.shape[0] == cfg_rows - 37 == resized.decoder.lm_head.weight.shape[0]
    assert torch.equal(resized.embed_tokens.weight, full.embed_tokens.weight[: cfg_rows - 37])
    with pytest.raises(ValueError, match="exceeds config vocab_size"):
        load_model(tiny_ckpt, vocab_rows=cfg_rows + 1)


def test_bin_checkpoint_loads_with_weights_only(tiny_ckpt, tmp_path):
    target = tmp_path / "bin"
    shutil.copytree(tiny_ckpt, target)
    state = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    torch.save(state, target / "pytorch_model.bin")
    a, b = _params(load_model(tiny_ckpt)), _params(load_model(target))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _copy_with(tiny_ckpt, tmp_path, edit):
    target = tmp_path / "edited"
    shutil.copytree(tiny_ckpt, target)
    state = load_file(target / "model.safetensors")
    edit(state)
    save_file(state, str(target / "model.safetensors"))
    return target


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_ckpt, tmp_path):
    ckpt = _copy_with(tiny_ckpt, tmp_path / "a", lambda s: s.pop("model.layers.2.self_attn.cross_attn_warm_up_gate"))
    # Named as the checkpoint names it (issue 11), not by our parameter name.
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.2\.self_attn\.cross_attn_warm_up_gate"):
        load_model(ckpt)
    ckpt = _copy_with(tiny_ckpt, tmp_path / "b", lambda s: s.update({"model.layers.1.self_attn.bogus": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unexpected tensors: model\.layers\.1\.self_attn\.bogus"):
        load_model(ckpt)
    ckpt = _copy_with(tiny_ckpt, tmp_path / "c", lambda s: s.update({"model.norm.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"mis-shaped tensors: model\.norm\.weight \[3\] \(expected \[64\]\)"):
        load_model(ckpt)


def test_corrupt_and_absent_files(tiny_ckpt, tmp_path):
    target = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, target)
    (target / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt or unreadable safetensors"):
        load_model(target)
    (target / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights found"):
        load_model(target)
    with pytest.raises(ValueError, match="checkpoint directory not found"):
        load_model(tmp_path / "nope")


def test_hub_id_offline_gives_one_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = "from slowfast_trt.models.slowfast.checkpoint import resolve_checkpoint; resolve_checkpoint('shi-labs/not-downloaded')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "shi-labs/not-downloaded: not a local directory, and downloading it from the Hugging Face Hub failed" in proc.stderr
