"""The Slow-Fast family (``llava_qwen_slow_fast``): ConvNeXt-576 tower, projector, slow/fast tokens,
Qwen2 with hybrid cross-attention layers."""

from __future__ import annotations

from pathlib import Path

from slowfast_trt.models.family import ModelFamily
from slowfast_trt.models.slowfast.checkpoint import load_model
from slowfast_trt.models.slowfast.config import MODEL_TYPE, SlowFastConfig


def _read_config(directory: Path) -> SlowFastConfig:
    return SlowFastConfig.from_file(Path(directory) / "config.json")


SLOWFAST = ModelFamily(
    name="slowfast",
    model_types=(MODEL_TYPE,),
    read_config=_read_config,
    load_model=load_model,
    subgraphs=("vision", "pooler", "slow_kv", "decoder", "decoder_nocross"),
    prompt_template="qwen_1_5",
    video_cache="fast tokens (prompt rows) and the slow K/V of every hybrid layer, computed once per video",
)
