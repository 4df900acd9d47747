"""LongVU ``config.json`` (``model_type`` ``cambrian_qwen``) and the two towers' configs, parsed once.

Only the keys upstream reads at inference (``cambrian_arch.py``, ``cambrian_qwen.py``, the tower
classes) are parsed; defaults for absent keys are upstream's ``getattr`` defaults. Values upstream
cannot run, or that change code paths we do not reproduce (``frame_pos``, in-LLM sampler layers,
more than one query group), are a ``ValueError`` naming the key.

Hard-coded by upstream, not read from any config (quirk 1): the tower hub ids, 384 px for SigLIP
and 378 px for DINOv2, the 576-token (24x24) tower grid, the SVA's 16 heads, chunks of 64 frames,
the selection window of 16 frames and the cap of 400 kept frames, the 8-frame drop chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slowfast_trt.models.qwen2.config import TextConfig, positive_int, read_config_json, require

__all__ = [
    "DINO_PIXELS", "DINO_REPO_ID", "LongVUConfig", "MODEL_TYPE", "SIGLIP_PIXELS", "SIGLIP_REPO_ID",
    "SVA_HEADS", "TOWER_GRID", "TowerConfig",
]

MODEL_TYPE = "cambrian_qwen"
SIGLIP_REPO_ID = "google/siglip-so400m-patch14-384"  # siglip_encoder.py
DINO_REPO_ID = "facebook/dinov2-giant"  # dino_encoder.py
SIGLIP_PIXELS = 384  # siglip_encoder.py: res = 384
DINO_PIXELS = 378  # dino_encoder.py: res = 378 (processor overridden to crop 378, shortest edge 378)
TOWER_GRID = 24  # both towers' features are interpolated to 576 = 24 x 24 tokens
SVA_HEADS = 16  # vision_sampler.py: VisionCrossAttentionLayer num_heads = 16
INFERENCE_MAX_LENGTH = 16  # getattr(config, "inference_max_length", 16); absent from the release


def _number(cfg: Mapping[str, Any], key: str, source: str, default: float) -> float:
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source}: key '{key}' must be a number, got {value!r}")
    return float(value)


def _flag(cfg: Mapping[str, Any], key: str, source: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{source}: key '{key}' must be true or false, got {value!r}")
    return value


def _tower_names(cfg: Mapping[str, Any], source: str) -> tuple[str, str]:
    names = cfg.get("mm_vision_tower_aux_list", cfg.get("vision_tower_aux_list"))
    if not isinstance(names, list) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: key 'mm_vision_tower_aux_list' must list two towers (SigLIP, DINOv2), got {names!r}")
    # Upstream picks the class by substring and reads SigLIP at index 0, DINOv2 at index -1.
    if "siglip" not in names[0].lower() or "dinov2" not in names[1].lower():
        raise ValueError(
            f"{source}: unsupported value {names!r} for key 'mm_vision_tower_aux_list' "
            "(supported: a SigLIP tower first, a DINOv2 tower second)"
        )
    lens = cfg.get("mm_vision_tower_aux_token_len_list", cfg.get("vision_tower_aux_token_len_list"))
    if lens != [TOWER_GRID**2, TOWER_GRID**2]:
        raise ValueError(
            f"{source}: unsupported value {lens!r} for key 'mm_vision_tower_aux_token_len_list' (supported: [576, 576])"
        )
    return names[0], names[1]


@dataclass(frozen=True)
class LongVUConfig:
    """The LongVU model: Qwen2 text config plus the connector and token-budget settings."""

    text: TextConfig
    tower_names: tuple[str, str]
    vision_hidden: int  # Dv, the connector width
    connector_depth: int
    image_token_len: int  # 144: the 12 x 12 query grid
    lowres_token: int  # 8: the 8 x 8 low-resolution grid
    highres: bool
    dino_threshold: float
    drop_threshold: float
    max_length: int  # tokenizer_model_max_length (L), the budget of the whole prompt
    inference_max_length: int
    source: str = "config.json"

    @property
    def query_side(self) -> int:
        return int(self.image_token_len**0.5)

    @property
    def kv_size(self) -> int:
        """Tower tokens per query cell and side: 24 // 12 = 2 (``cross_att_token_len_list``)."""
        return TOWER_GRID // self.query_side

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str = "config.json") -> "LongVUConfig":
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
        model_type = cfg.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"{source}: unsupported value {model_type!r} for key 'model_type' (supported: {MODEL_TYPE!r})")
        text = TextConfig.from_dict(cfg, source)
        projector = cfg.get("mm_projector_type", "linear")
        if projector != "sva":
            raise ValueError(f"{source}: unsupported value {projector!r} for key 'mm_projector_type' (supported: 'sva')")
        groups = positive_int(cfg, "num_query_group", source, default=1)
        if groups != 1:
            raise ValueError(f"{source}: unsupported value {groups!r} for key 'num_query_group' (supported: 1)")
        image_token_len = positive_int(cfg, "image_token_len", source, default=144)
        queries = require(cfg, "query_num_list", source)
        if queries != [image_token_len]:
            raise ValueError(f"{source}: unsupported value {queries!r} for key 'query_num_list' (supported: [image_token_len])")
        side = int(image_token_len**0.5)
        if side * side != image_token_len or TOWER_GRID % side:
            raise ValueError(
                f"{source}: key 'image_token_len' must be a square whose side divides {TOWER_GRID}, got {image_token_len}"
            )
        for key, supported in (("connector_only", True), ("frame_pos", False)):
            if _flag(cfg, key, source, supported) != supported:
                raise ValueError(f"{source}: unsupported value {not supported} for key '{key}' (supported: {supported})")
        if _flag(cfg, "mm_use_im_start_end", source, False):
            raise ValueError(f"{source}: unsupported value True for key 'mm_use_im_start_end' (supported: false)")
        vision_hidden = positive_int(cfg, "vision_hidden_size", source)
        if vision_hidden % SVA_HEADS:
            raise ValueError(f"{source}: key 'vision_hidden_size' must be a multiple of {SVA_HEADS}, got {vision_hidden}")
        lowres = positive_int(cfg, "lowres_token", source, default=8)
        return cls(
            text=text,
            tower_names=_tower_names(cfg, source),
            vision_hidden=vision_hidden,
            connector_depth=positive_int(cfg, "connector_depth", source),
            image_token_len=image_token_len,
            lowres_token=lowres,
            highres=_flag(cfg, "highres", source, False),
            dino_threshold=_number(cfg, "dino_threshold", source, 0.83),
            drop_threshold=_number(cfg, "drop_threshold", source, 0.7),
            max_length=positive_int(cfg, "tokenizer_model_max_length", source),
            inference_max_length=positive_int(cfg, "inference_max_length", source, default=INFERENCE_MAX_LENGTH),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "LongVUConfig":
        return cls.from_dict(read_config_json(path), str(path))


@dataclass(frozen=True)
class TowerConfig:
    """A SigLIP or DINOv2 vision transformer, from its Hugging Face ``config.json``."""

    kind: str  # "siglip" or "dinov2"
    hidden_size: int
    intermediate_size: int  # SigLIP MLP width (DINOv2 derives its own from mlp_ratio)
    num_layers: int
    num_heads: int
    patch_size: int
    image_size: int  # the config's; SigLIP needs 384, DINOv2 interpolates its positions
    layer_norm_eps: float
    hidden_act: str
    use_swiglu_ffn: bool = False
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    source: str = "config.json"

    @property
    def dino_mlp_hidden(self) -> int:
        """Hidden width of the DINOv2 MLP (SwiGLU: 2/3 of it, rounded up to a multiple of 8)."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if self.use_swiglu_ffn else hidden

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], kind: str, source: str) -> "TowerConfig":
        if not isinstance(raw, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        cfg = raw
        model_type = raw.get("model_type")
        if kind == "siglip":
            if model_type == "siglip":  # a full SiglipModel: upstream loads its vision part
                cfg = raw.get("vision_config") or {}
            elif model_type != "siglip_vision_model":
                raise ValueError(f"{source}: not a SigLIP tower (model_type {model_type!r}, expected 'siglip')")
            defaults = {"hidden_size": 768, "intermediate_size": 3072, "layers": 12, "heads": 12, "patch": 16,
                        "image": 224, "act": "gelu_pytorch_tanh"}
        else:
            if model_type != "dinov2":
                raise ValueError(f"{source}: not a DINOv2 tower (model_type {model_type!r}, expected 'dinov2')")
            defaults = {"hidden_size": 768, "intermediate_size": 0, "layers": 12, "heads": 12, "patch": 14,
                        "image": 224, "act": "gelu"}
        hidden = positive_int(cfg, "hidden_size", source, defaults["hidden_size"])
        heads = positive_int(cfg, "num_attention_heads", source, defaults["heads"])
        if hidden % heads:
            raise ValueError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        act = cfg.get("hidden_act", defaults["act"])
        if act not in ("gelu", "gelu_pytorch_tanh"):
            raise ValueError(f"{source}: unsupported value {act!r} for key 'hidden_act' (supported: gelu, gelu_pytorch_tanh)")
        return cls(
            kind=kind,
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size") or defaults["intermediate_size"]),
            num_layers=positive_int(cfg, "num_hidden_layers", source, defaults["layers"]),
            num_heads=heads,
            patch_size=positive_int(cfg, "patch_size", source, defaults["patch"]),
            image_size=positive_int(cfg, "image_size", source, defaults["image"]),
            layer_norm_eps=_number(cfg, "layer_norm_eps", source, 1e-6),
            hidden_act=act,
            use_swiglu_ffn=_flag(cfg, "use_swiglu_ffn", source, False),
            mlp_ratio=_number(cfg, "mlp_ratio", source, 4.0),
            qkv_bias=_flag(cfg, "qkv_bias", source, True),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path, kind: str) -> "TowerConfig":
        return cls.from_dict(read_config_json(path), kind, str(path))
