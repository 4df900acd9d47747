"""The Slow-Fast family (``llava_qwen_slow_fast``): ConvNeXt-576 tower, projector, slow/fast tokens,
Qwen2 with hybrid cross-attention layers."""

from __future__ import annotations

from pathlib import Path

from slowfast_trt.models.family import ModelFamily
from slowfast_trt.models.slowfast.checkpoint import load_model
from slowfast_trt.models.slowfast.config import MODEL_TYPE, SlowFastConfig
from slowfast_trt.prompt import Conversation, stop_token_ids
from slowfast_trt.video import load_video


def _read_config(directory: Path) -> SlowFastConfig:
    return SlowFastConfig.from_file(Path(directory) / "config.json")


def _stop_ids(tokenizer, config) -> tuple[int, ...]:
    return stop_token_ids(tokenizer)  # <|im_end|>, then <|endoftext|>


def _sample_video(path, frames: int, **options):
    """``frames`` frames, upstream's uniform rule by default (``sampling``, ``fps``, ``start_s``, ``end_s``)."""
    return load_video(path, frames, **options)


SLOWFAST = ModelFamily(
    name="slowfast",
    model_types=(MODEL_TYPE,),
    read_config=_read_config,
    load_model=load_model,
    subgraphs=("vision", "projector", "fast_pool", "slow_kv", "decoder", "decoder_nocross"),
    prompt_template="qwen_1_5",
    video_cache="fast tokens (prompt rows) and the slow K/V of every hybrid layer, computed once per video",
    conversation=Conversation,
    stop_ids=_stop_ids,
    sample_video=_sample_video,
    video_options=("frames", "sampling", "fps", "start_s", "end_s"),
    runtime="slowfast_runtime:SlowFastRuntime",
)
