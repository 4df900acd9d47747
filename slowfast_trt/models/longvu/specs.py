"""Inputs and outputs of LongVU's exported subgraphs: the one spec the exporter, the runtime and
the tests import.

| subgraph  | file            | inputs -> outputs                                                          |
|-----------|-----------------|----------------------------------------------------------------------------|
| dino      | dino.onnx       | frames (N, 378, 378, 3) uint8 -> features (N, 576, C_dino)                 |
| siglip    | siglip.onnx     | frames (N, 384, 384, 3) uint8 -> features (N, 576, C_siglip)               |
| connector | connector.onnx  | siglip_features (N, 576, C_s), dino_features (N, 576, C_d), cell_bias (Q, 2r²) float32 -> high_tokens (N, Q, hid), low_tokens (N, l², hid) |
| decoder   | decoder.onnx    | the plain Qwen2 decoder: the tensors of Slow-Fast's ``decoder_nocross``    |
| embed     | embed_tokens.npy| not a graph: the (vocab_rows, hid) table the runtime gathers from          |

Frames are the host's pad-to-square + bicubic resize (uint8, channels last); each tower graph
normalises them. N is at most :data:`CHUNK` (upstream's 64-frame chunks; every stage is per frame,
so the host runs longer videos and more kept frames in chunks). ``decoder``: ``inputs_embeds``
(1, seq, hid), ``position_ids`` (1, seq) int64, ``past_length`` (1,) int64,
``past_key_i``/``past_value_i`` (1, past, Hkv, D) -> ``logits`` (1, vocab_rows),
``new_key_i``/``new_value_i`` (1, seq, Hkv, D); KV layout ``[batch, seq, kv_heads, head_dim]``.

``TensorSpec`` / ``SubgraphSpec`` have the fields of the Slow-Fast family's (what
:mod:`slowfast_trt.export.manifest` and the engines read); families do not import each other.
"""

from __future__ import annotations


from slowfast_trt.models.subgraph_spec import SubgraphSpec, TensorSpec
from slowfast_trt.models.longvu.config import DINO_PIXELS, SIGLIP_PIXELS, TOWER_GRID, LongVUConfig
from slowfast_trt.models.longvu.model import CHUNK_FRAMES

__all__ = ["CHUNK", "CONNECTOR", "DECODER", "DINO", "EMBED", "EMBED_FILE", "PRECISIONS", "SIGLIP",
           "SubgraphSpec", "TensorSpec", "subgraph_specs"]

CHUNK = CHUNK_FRAMES
DINO, SIGLIP, CONNECTOR, DECODER, EMBED = "dino", "siglip", "connector", "decoder", "embed"
EMBED_FILE = "embed_tokens.npy"
PRECISIONS = ("float32", "float16")




def _decoder(config: LongVUConfig, precision: str, max_seq_len: int, vocab_rows: int) -> SubgraphSpec:
    text = config.text
    kv, dim, hid = text.num_kv_heads, text.head_dim, text.hidden_size
    inputs = [TensorSpec("inputs_embeds", (1, "seq", hid), precision), TensorSpec("position_ids", (1, "seq"), "int64"),
              TensorSpec("past_length", (1,), "int64")]
    outputs = [TensorSpec("logits", (1, vocab_rows), precision)]
    for i in range(text.num_layers):
        inputs += [TensorSpec(f"past_{kind}_{i}", (1, "past", kv, dim), precision) for kind in ("key", "value")]
        outputs += [TensorSpec(f"new_{kind}_{i}", (1, "seq", kv, dim), precision) for kind in ("key", "value")]
    dims = (("seq", 1, max_seq_len), ("past", 0, max_seq_len))
    return SubgraphSpec(DECODER, tuple(inputs), tuple(outputs), "decoder.onnx", dims, "decoder.onnx.data")


def subgraph_specs(config: LongVUConfig, siglip_dim: int, dino_dim: int, precision: str, max_seq_len: int,
                   vocab_rows: int) -> dict[str, SubgraphSpec]:
    """Every subgraph of a LongVU export (see the module table)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    limit = config.text.max_position_embeddings
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or not 2 <= max_seq_len <= limit:
        raise ValueError(f"max_seq_len must be an integer in [2, {limit}] (max_position_embeddings), got {max_seq_len!r}")
    tokens, hid, frames = TOWER_GRID**2, config.text.hidden_size, ("frames", 1, CHUNK)
    q, keys, low = config.image_token_len, 2 * config.kv_size**2, config.lowres_token**2
    dino = SubgraphSpec(DINO, (TensorSpec("frames", ("frames", DINO_PIXELS, DINO_PIXELS, 3), "uint8"),),
                        (TensorSpec("features", ("frames", tokens, dino_dim), precision),),
                        "dino.onnx", (frames,), "dino.onnx.data")
    siglip = SubgraphSpec(SIGLIP, (TensorSpec("frames", ("frames", SIGLIP_PIXELS, SIGLIP_PIXELS, 3), "uint8"),),
                          (TensorSpec("features", ("frames", tokens, siglip_dim), precision),),
                          "siglip.onnx", (frames,), "siglip.onnx.data")
    connector = SubgraphSpec(
        CONNECTOR,
        (TensorSpec("siglip_features", ("frames", tokens, siglip_dim), precision),
         TensorSpec("dino_features", ("frames", tokens, dino_dim), precision),
         TensorSpec("cell_bias", (q, keys), "float32")),
        (TensorSpec("high_tokens", ("frames", q, hid), precision), TensorSpec("low_tokens", ("frames", low, hid), precision)),
        "connector.onnx", (frames,), "connector.onnx.data")
    embed = SubgraphSpec(EMBED, (TensorSpec("token_ids", (1, "seq"), "int64"),),
                         (TensorSpec("inputs_embeds", (1, "seq", hid), precision),), EMBED_FILE, (("seq", 1, max_seq_len),))
    specs = [dino, siglip, connector, _decoder(config, precision, max_seq_len, vocab_rows), embed]
    return {s.name: s for s in specs}
