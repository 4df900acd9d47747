"""Inputs and outputs of every exported subgraph: the one spec imported by the exporter, the
runtime and the tests.

| subgraph        | file                 | inputs -> outputs                                                  |
|-----------------|----------------------|--------------------------------------------------------------------|
| vision          | vision.onnx          | frames (N, S, S, 3) uint8 -> features (N, g*g, C_vis)              |
| projector       | projector.onnx       | features (N, g*g, C_vis), grid_pool (n', g*g) -> frame_tokens (N, n', hid) |
| fast_pool       | fast_pool.onnx       | frame_tokens (T, n', hid), temporal_pool (F, T), spatial_pool (n'', n') -> fast_tokens (F, n'', hid); no weights |
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
Every frame count from 1 to ``max_frames`` runs on the same graphs: only the fast tokens'
temporal pooling depends on T, and it is data, the float32 matrices of
:func:`slowfast_trt.models.slowfast.visual_tokens.pooling_matrices` (``grid_pool``: the 2x2
video pooling of each frame, identity for an image; ``temporal_pool``; ``spatial_pool``). The
slow tokens of a video are its frame tokens, frame-major: ``frame_tokens.reshape(1, T*n', hid)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from slowfast_trt.models.subgraph_spec import SubgraphSpec, TensorSpec
from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast.visual_tokens import fast_frame_count, video_pooling_stride

# bfloat16 is not exported: opset 17 Conv and AveragePool do not accept it (the tower and the
# pooler would be invalid ONNX) and ONNX Runtime's CPU provider has no bfloat16 kernels (not even
# Mul), so parity could not be checked. For bfloat16 TensorRT engines export float32 and build
# with the BF16 builder flag.
PRECISIONS = ("float32", "float16")
# ConvNeXt: patch-4 stem and three 2x downsamples; the only supported tower (convnext-576).
VISION_STRIDE = 32

VISION, PROJECTOR, FAST_POOL, SLOW_KV, DECODER, DECODER_NOCROSS, EMBED = (
    "vision",
    "projector",
    "fast_pool",
    "slow_kv",
    "decoder",
    "decoder_nocross",
    "embed",
)
EMBED_FILE = "embed_tokens.npy"




def tokens_per_frame(config: SlowFastConfig, frames: int) -> tuple[int, int]:
    """(tokens per frame out of the vision tower, slow tokens per frame after video pooling)."""
    side = config.visual.image_size // VISION_STRIDE
    pooled = side // video_pooling_stride(frames, config.visual)
    return side * side, pooled * pooled


def fast_token_count(config: SlowFastConfig, frames: int) -> int:
    _, per_frame = tokens_per_frame(config, frames)
    side = int(per_frame**0.5) // config.visual.fast_spatial_stride
    return fast_frame_count(frames, config.visual) * side * side


@dataclass(frozen=True)
class FrameBounds:
    """Token counts an export for 1..``max_frames`` frames must hold (maxima over every T)."""

    max_frames: int
    grid_tokens: int  # vision tokens per frame (g*g)
    tokens_per_frame: tuple[int, int]  # frame tokens n': (a video's, an image's) range
    fast_tokens_per_frame: tuple[int, int]  # n'' range
    max_fast_frames: int
    max_slow: int
    max_fast: int


def frame_bounds(config: SlowFastConfig, max_frames: int) -> FrameBounds:
    """The ranges of every frame-dependent dimension for videos of 1..``max_frames`` frames."""
    grid, image = tokens_per_frame(config, 1)
    _, video = tokens_per_frame(config, 2) if max_frames > 1 else (grid, image)
    stride = config.visual.fast_spatial_stride
    fast_per = sorted({(int(n**0.5) // stride) ** 2 for n in (video, image)})
    counts = range(1, max_frames + 1)
    return FrameBounds(
        max_frames=max_frames,
        grid_tokens=grid,
        tokens_per_frame=(min(video, image), max(video, image)),
        fast_tokens_per_frame=(fast_per[0], fast_per[-1]),
        max_fast_frames=max(fast_frame_count(t, config.visual) for t in counts),
        max_slow=max(t * tokens_per_frame(config, t)[1] for t in counts),
        max_fast=max(fast_token_count(config, t) for t in counts),
    )


def _check(precision: str, max_frames: int, max_seq_len: int, config: SlowFastConfig) -> None:
    if precision == "bfloat16":
        raise ValueError(
            "precision 'bfloat16' is not exported (ONNX opset 17 Conv/AveragePool reject it and ONNX Runtime "
            "CPU cannot run it): export 'float32' and build the TensorRT engine with BF16 enabled"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be an integer >= 1, got {max_frames!r}")
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


def _visual_specs(config: SlowFastConfig, precision: str, bounds: FrameBounds) -> list[SubgraphSpec]:
    """vision, projector and fast_pool: every dimension that depends on T is dynamic."""
    visual, hid = config.visual, config.text.hidden_size
    grid, size = bounds.grid_tokens, visual.image_size
    frames = ("frames", 1, bounds.max_frames)
    per_frame = ("tokens_per_frame", *bounds.tokens_per_frame)
    frame_tokens = TensorSpec("frame_tokens", ("frames", "tokens_per_frame", hid), precision)
    vision = SubgraphSpec(
        VISION,
        (TensorSpec("frames", ("frames", size, size, 3), "uint8"),),
        (TensorSpec("features", ("frames", grid, visual.mm_hidden_size), precision),),
        "vision.onnx",
        (frames,),
        "vision.onnx.data",
    )
    projector = SubgraphSpec(
        PROJECTOR,
        (TensorSpec("features", ("frames", grid, visual.mm_hidden_size), precision),
         TensorSpec("grid_pool", ("tokens_per_frame", grid), "float32")),
        (frame_tokens,),
        "projector.onnx",
        (frames, per_frame),
        "projector.onnx.data",
    )
    fast_pool = SubgraphSpec(
        FAST_POOL,
        (frame_tokens,
         TensorSpec("temporal_pool", ("fast_frames", "frames"), "float32"),
         TensorSpec("spatial_pool", ("fast_tokens_per_frame", "tokens_per_frame"), "float32")),
        (TensorSpec("fast_tokens", ("fast_frames", "fast_tokens_per_frame", hid), precision),),
        "fast_pool.onnx",
        (frames, per_frame, ("fast_frames", 1, bounds.max_fast_frames),
         ("fast_tokens_per_frame", *bounds.fast_tokens_per_frame)),
    )
    return [vision, projector, fast_pool]


def subgraph_specs(
    config: SlowFastConfig, precision: str, max_frames: int, max_seq_len: int, vocab_rows: int | None = None
) -> dict[str, SubgraphSpec]:
    """Every subgraph of an export for videos of 1..``max_frames`` frames and ``max_seq_len`` positions.

    ``vocab_rows``: rows of the embedding and LM head (the tokenizer length, to which the
    loader resizes them); defaults to the config's ``vocab_size``.
    """
    _check(precision, max_frames, max_seq_len, config)
    text = config.text
    vocab_rows = vocab_rows or text.vocab_size
    hid = text.hidden_size
    bounds = frame_bounds(config, max_frames)
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
        (("slow_tokens", 1, bounds.max_slow),),
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
        *_visual_specs(config, precision, bounds),
        slow_kv,
        _decoder(config, precision, max_seq_len, bounds.max_slow, vocab_rows, cross=True),
        _decoder(config, precision, max_seq_len, bounds.max_slow, vocab_rows, cross=False),
        embed,
    ]
    return {spec.name: spec for spec in specs}
