"""Inputs and outputs of every exported subgraph: the one spec imported by the exporter, the
runtime and the tests.

| subgraph        | file                 | inputs -> outputs                                                  |
|-----------------|----------------------|--------------------------------------------------------------------|
| vision          | vision.onnx          | frames (N, S, S, 3) uint8 -> features (N, g*g, C_vis)              |
| pooler          | pooler.onnx          | features (T, g*g, C_vis) -> slow_tokens (Ns, hid), fast_tokens (Nf, hid) |
| slow_kv         | slow_kv.onnx         | slow_tokens (1, Ns, hid) -> slow_key_j, slow_value_j (1, Hkv, Ns, D) |
| decoder         | decoder.onnx         | prefill and ``attend`` decode (cross-attention, see below)         |
| decoder_nocross | decoder_nocross.onnx | ``upstream`` decode steps and prompts without video                |
| embed           | embed_tokens.npy     | not a graph: the (vocab_rows, hid) table the runtime gathers from  |

``decoder`` inputs: ``inputs_embeds`` (1, seq, hid), ``position_ids`` (1, seq) int64,
``past_length`` (1,) int64 (past rows at or beyond it are not attended: the past may be the
valid prefix of the cache, past = past_length, or the whole cache, past = max_seq_len, which
gives decode steps static shapes for CUDA graphs; see :mod:`slowfast_trt.models.slowfast.decoder`),
``past_key_i``/``past_value_i`` (1, past, Hkv, D) for every layer i, ``slow_key_j``/
``slow_value_j`` (1, Hkv, slow_tokens, D) for every hybrid layer j (j counts hybrid layers),
``slow_lengths`` (1,) int32, ``cross_rows`` (rows,) int64, ``cross_row_offsets`` (2,) int32;
outputs ``logits`` (1, vocab_rows) of the last position and ``new_key_i``/``new_value_i``
(1, seq, Hkv, D). ``decoder_nocross`` has the same tensors without the slow and cross ones.
Layouts are those of :mod:`slowfast_trt.models.slowfast.decoder` (KV cache [batch, seq, kv_heads,
head_dim], slow K/V [batch, kv_heads, slow_tokens, head_dim]). Batch is 1.

Frames are uint8 RGB, channels last, already resized and center-cropped to S x S by
:func:`slowfast_trt.preprocess.resize_and_center_crop`; the graph does ``x / 255``, the CLIP
mean/std and NHWC -> NCHW. Float frames are not accepted: the uint8 input is 4x smaller to
upload and makes the normalisation bit-identical to :func:`slowfast_trt.preprocess.normalize`.
The pooler is exported for one frame count T (its temporal pooling is static at that T).
"""

from __future__ import annotations

from dataclasses import dataclass

from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.visual_tokens import fast_frame_count, video_pooling_stride

# bfloat16 is not exported: opset 17 Conv and AveragePool do not accept it (the tower and the
# pooler would be invalid ONNX) and ONNX Runtime's CPU provider has no bfloat16 kernels (not even
# Mul), so parity could not be checked. For bfloat16 TensorRT engines export float32 and build
# with the BF16 builder flag.
PRECISIONS = ("float32", "float16")
# ConvNeXt: patch-4 stem and three 2x downsamples; the only supported tower (convnext-576).
VISION_STRIDE = 32

VISION, POOLER, SLOW_KV, DECODER, DECODER_NOCROSS, EMBED = (
    "vision",
    "pooler",
    "slow_kv",
    "decoder",
    "decoder_nocross",
    "embed",
)
EMBED_FILE = "embed_tokens.npy"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``shape`` holds ints and names of dynamic dimensions."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # float32 / float16 / int64 / int32 / uint8


@dataclass(frozen=True)
class SubgraphSpec:
    """One exported subgraph.

    ``dims`` gives (name, min, max) for every named dimension, e.g. for TensorRT profiles.
    ``data_file`` is the external-data file holding its weights ("" for none);
    ``decoder`` and ``decoder_nocross`` share one.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    file: str
    dims: tuple[tuple[str, int, int], ...] = ()
    data_file: str = ""

    @property
    def is_onnx(self) -> bool:
        return self.file.endswith(".onnx")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dim_range(self, name: str) -> tuple[int, int]:
        for dim, low, high in self.dims:
            if dim == name:
                return low, high
        raise KeyError(f"{self.name}: no dynamic dimension {name!r}")


def tokens_per_frame(config: SlowFastConfig, frames: int) -> tuple[int, int]:
    """(tokens per frame out of the vision tower, slow tokens per frame after video pooling)."""
    side = config.visual.image_size // VISION_STRIDE
    pooled = side // video_pooling_stride(frames, config.visual)
    return side * side, pooled * pooled


def fast_token_count(config: SlowFastConfig, frames: int) -> int:
    _, per_frame = tokens_per_frame(config, frames)
    side = int(per_frame**0.5) // config.visual.fast_spatial_stride
    return fast_frame_count(frames, config.visual) * side * side


def _check(precision: str, frames: int, max_seq_len: int, config: SlowFastConfig) -> None:
    if precision == "bfloat16":
        raise ValueError(
            "precision 'bfloat16' is not exported (ONNX opset 17 Conv/AveragePool reject it and ONNX Runtime "
            "CPU cannot run it): export 'float32' and build the TensorRT engine with BF16 enabled"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    limit = config.text.max_position_embeddings
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or not 2 <= max_seq_len <= limit:
        raise ValueError(
            f"max_seq_len must be an integer in [2, {limit}] (max_position_embeddings), got {max_seq_len!r}"
        )


def _decoder(config, precision, max_seq_len, max_slow, vocab_rows, cross: bool) -> SubgraphSpec:
    text = config.text
    kv, dim, hid = text.num_kv_heads, text.head_dim, text.hidden_size
    inputs = [
        TensorSpec("inputs_embeds", (1, "seq", hid), precision),
        TensorSpec("position_ids", (1, "seq"), "int64"),
        TensorSpec("past_length", (1,), "int64"),
    ]
    outputs = [TensorSpec("logits", (1, vocab_rows), precision)]
    for i in range(text.num_layers):
        inputs += [TensorSpec(f"past_{kind}_{i}", (1, "past", kv, dim), precision) for kind in ("key", "value")]
        outputs += [TensorSpec(f"new_{kind}_{i}", (1, "seq", kv, dim), precision) for kind in ("key", "value")]
    # past = max_seq_len: a static-shape decode step over the whole cache (past_length masks it)
    dims = [("seq", 1, max_seq_len), ("past", 0, max_seq_len)]
    if cross:
        for j in range(len(config.cross_attn.hybrid_layers)):
            inputs += [
                TensorSpec(f"slow_{kind}_{j}", (1, kv, "slow_tokens", dim), precision) for kind in ("key", "value")
            ]
        inputs += [
            TensorSpec("slow_lengths", (1,), "int32"),
            TensorSpec("cross_rows", ("rows",), "int64"),
            TensorSpec("cross_row_offsets", (2,), "int32"),
        ]
        dims += [("slow_tokens", 1, max_slow), ("rows", 0, max_seq_len)]
    name = DECODER if cross else DECODER_NOCROSS
    return SubgraphSpec(name, tuple(inputs), tuple(outputs), f"{name}.onnx", tuple(dims), f"{DECODER}.onnx.data")


def subgraph_specs(
    config: SlowFastConfig, precision: str, frames: int, max_seq_len: int, vocab_rows: int | None = None
) -> dict[str, SubgraphSpec]:
    """Every subgraph of an export for ``frames`` frames per video and ``max_seq_len`` positions.

    ``vocab_rows``: rows of the embedding and LM head (the tokenizer length, to which the
    loader resizes them); defaults to the config's ``vocab_size``.
    """
    _check(precision, frames, max_seq_len, config)
    text, visual = config.text, config.visual
    vocab_rows = vocab_rows or text.vocab_size
    hid, size = text.hidden_size, visual.image_size
    grid, per_frame = tokens_per_frame(config, frames)
    num_slow, num_fast = frames * per_frame, fast_token_count(config, frames)
    features = TensorSpec("features", ("frames", grid, visual.mm_hidden_size), precision)
    vision = SubgraphSpec(
        VISION,
        (TensorSpec("frames", ("frames", size, size, 3), "uint8"),),
        (features,),
        "vision.onnx",
        (("frames", 1, frames),),
        "vision.onnx.data",
    )
    pooler = SubgraphSpec(
        POOLER,
        (TensorSpec("features", (frames, grid, visual.mm_hidden_size), precision),),
        (TensorSpec("slow_tokens", (num_slow, hid), precision), TensorSpec("fast_tokens", (num_fast, hid), precision)),
        "pooler.onnx",
        (),
        "pooler.onnx.data",
    )
    kv_outputs = tuple(
        TensorSpec(f"slow_{kind}_{j}", (1, text.num_kv_heads, "slow_tokens", text.head_dim), precision)
        for j in range(len(config.cross_attn.hybrid_layers))
        for kind in ("key", "value")
    )
    slow_kv = SubgraphSpec(
        SLOW_KV,
        (TensorSpec("slow_tokens", (1, "slow_tokens", hid), precision),),
        kv_outputs,
        "slow_kv.onnx",
        (("slow_tokens", 1, num_slow),),
        "slow_kv.onnx.data",
    )
    embed = SubgraphSpec(
        EMBED,
        (TensorSpec("token_ids", (1, "seq"), "int64"),),
        (TensorSpec("inputs_embeds", (1, "seq", hid), precision),),
        EMBED_FILE,
        (("seq", 1, max_seq_len),),
    )
    specs = [
        vision,
        pooler,
        slow_kv,
        _decoder(config, precision, max_seq_len, num_slow, vocab_rows, cross=True),
        _decoder(config, precision, max_seq_len, num_slow, vocab_rows, cross=False),
        embed,
    ]
    return {spec.name: spec for spec in specs}
