"""The LongVU family (``cambrian_qwen``): SigLIP + DINOv2 towers, DINO frame selection, SVA connector,
a plain Qwen2 decoder (Vision-CAIR/LongVU_Qwen2_7B)."""

from __future__ import annotations

from pathlib import Path

from slowfast_trt.models.family import ModelFamily
from slowfast_trt.models.longvu.checkpoint import load_model
from slowfast_trt.models.longvu.config import MODEL_TYPE, LongVUConfig
from slowfast_trt.models.longvu.prompt import TEMPLATE, LongVUConversation, longvu_stop_ids
from slowfast_trt.models.longvu.sampling import sample_video


def _read_config(directory: Path) -> LongVUConfig:
    return LongVUConfig.from_file(Path(directory) / "config.json")


def _stop_ids(tokenizer, config: LongVUConfig) -> tuple[int, ...]:
    return longvu_stop_ids(tokenizer, config.text.eos_token_id)


def _sample_video(path, **options):
    """One frame per ``round(fps)`` frames (the model card); there is no frame count to choose."""
    return sample_video(path)


LONGVU = ModelFamily(
    name="longvu",
    model_types=(MODEL_TYPE,),
    read_config=_read_config,
    load_model=load_model,
    subgraphs=("dino", "siglip", "connector", "decoder"),
    prompt_template=TEMPLATE,
    video_cache=(
        "DINOv2 features of every sampled frame and SigLIP + connector tokens of every frame a question kept; "
        "selection, mode and merge are redone per question (they depend on its length and text)"
    ),
    conversation=LongVUConversation,
    stop_ids=_stop_ids,
    sample_video=_sample_video,
    video_options=(),
    runtime="longvu_runtime:LongVURuntime",
)
