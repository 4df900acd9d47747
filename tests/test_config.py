import json
from pathlib import Path

import pytest

from slowfast_trt.models.slowfast.config import SlowFastConfig

# A copy of shared/reference/param_manifest_7b.json (measured on the upstream code) so the repo tests stand alone.
MANIFEST = Path(__file__).with_name("data") / "param_manifest_7b.json"


def manifest_config() -> dict:
    return json.loads(MANIFEST.read_text())["config"]


def test_released_7b_config():
    cfg = SlowFastConfig.from_dict(manifest_config())
    assert cfg.text.head_dim == 128 and cfg.text.kv_groups == 7
    assert cfg.cross_attn.hybrid_layers == (0, 8, 16, 24)
    assert cfg.cross_attn.text_rows_only and not cfg.cross_attn.mask_system
    assert cfg.cross_attn.gate_tanh and cfg.cross_attn.gate_warmup and cfg.cross_attn.warmup_through_tanh
    assert cfg.visual.image_size == 576 and cfg.visual.projector_depth == 2
    assert (cfg.visual.fast_temporal_stride, cfg.visual.min_fast_frames) == (4, 16)


@pytest.mark.parametrize(
    "impl, text_only, mask_system",
    [
        ("vanilla", False, False),
        ("vanilla-flashattn", False, False),
        ("text-only-vanilla", True, False),
        ("text-only-vanilla-masksystem-flashattn", True, True),
    ],
)
def test_cross_attn_implementations(impl, text_only, mask_system):
    cfg = SlowFastConfig.from_dict({**manifest_config(), "cross_attn_implementation": impl}).cross_attn
    assert (cfg.text_rows_only, cfg.mask_system, cfg.warmup_through_tanh) == (text_only, mask_system, text_only)


@pytest.mark.parametrize(
    "gating, tanh, warmup",
    [("whole-dynamic", False, False), ("whole-dynamic-tanh", True, False), ("whole-dynamic-warmup", False, True)],
)
def test_gating_variants(gating, tanh, warmup):
    cfg = SlowFastConfig.from_dict({**manifest_config(), "cross_attn_gating_type": gating}).cross_attn
    assert (cfg.gate_tanh, cfg.gate_warmup) == (tanh, warmup)


def test_defaults_follow_upstream_getattr():
    raw = manifest_config()
    for key in ("cross_attn_min_layer_depth", "cross_attn_max_layer_depth", "min_fast_frames"):
        raw.pop(key)
    cfg = SlowFastConfig.from_dict(raw)
    assert cfg.cross_attn.hybrid_layers == (0, 8, 16, 24)
    assert cfg.visual.min_fast_frames == 1
    assert SlowFastConfig.from_dict({**manifest_config(), "min_fast_frames": None}).visual.min_fast_frames == 1


@pytest.mark.parametrize(
    "key, value",
    [
        ("model_type", "llava_qwen"),
        ("mm_vision_tower", "openai/clip-vit-large-patch14"),
        ("mm_projector_type", "st_mlp"),
        ("cross_attn_implementation", "cross-only"),
        ("cross_attn_gating_type", "channel-wise-dynamic-sigmoid"),
        ("hidden_act", "gelu"),
        ("use_sliding_window", True),
        ("fast_token_temporal_stride", 0),
        ("num_attention_heads", 5),
    ],
)
def test_unsupported_value_names_key(key, value):
    with pytest.raises(ValueError) as info:
        SlowFastConfig.from_dict({**manifest_config(), key: value})
    assert key in str(info.value) or (key == "num_attention_heads" and "num_attention_heads" in str(info.value))


@pytest.mark.parametrize("key", ["mm_video_pooling_stride", "cross_attn_every_n_layers", "mm_hidden_size", "fast_token_spatial_stride"])
def test_missing_required_key(key):
    raw = manifest_config()
    raw.pop(key)
    with pytest.raises(ValueError, match=f"missing required key '{key}'"):
        SlowFastConfig.from_dict(raw)


def test_from_file_errors(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        SlowFastConfig.from_file(tmp_path / "config.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SlowFastConfig.from_file(bad)
