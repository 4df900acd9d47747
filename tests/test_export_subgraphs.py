"""Every exported subgraph, run in ONNX Runtime (CPU), matches the PyTorch module it came from.

fp32: relative error <= 1e-4 (of the largest magnitude); fp16: cosine >= 0.999 against the fp16
PyTorch module. The decoder is checked in prefill form (L = 20, P = 0, attending rows, slow
lengths below the slow-token count with the padding poisoned) and decode form (L = 1, P = 20,
R = 0 and R = 1), and the no-cross decoder against the decoder without slow tokens.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.export.onnx_io import INLINE_BYTES
from slowfast_trt.export.subgraphs import export_all, export_fast_pool, export_projector
from slowfast_trt.models.slowfast.visual_tokens import encode_visual_tokens, pooling_matrices
from slowfast_trt.preprocess import normalize
from slowfast_trt.models.slowfast.reference import ReferenceGenerator
from slowfast_trt.models.slowfast.sequence import attend_to_rows

FRAMES = 32
MAX_SEQ = 128
_ORT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "uint8": "tensor(uint8)",
}


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # fp16 Tanh of a constant cannot be folded on CPU: not an error
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Exported:
    """An export folder with its specs, lazily opened sessions and the model it came from."""

    def __init__(self, model, out_dir, specs):
        self.model, self.dir, self.specs, self._sessions = model, out_dir, specs, {}

    def run(self, name: str, **feeds) -> dict[str, np.ndarray]:
        if name not in self._sessions:
            self._sessions[name] = _session(self.dir / self.specs[name].file)
        spec = self.specs[name]
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items()}
        return dict(zip(spec.output_names, self._sessions[name].run(list(spec.output_names), arrays)))


def _export(ckpt, tmp_path_factory, precision, frames=FRAMES) -> Exported:
    model = ReferenceGenerator.load(ckpt, dtype=precision).model
    out_dir = tmp_path_factory.mktemp(f"onnx_{precision}")
    return Exported(model, out_dir, export_all(model, out_dir, precision, frames, MAX_SEQ))


@pytest.fixture(scope="module")
def fp32(tiny_ckpt, tmp_path_factory) -> Exported:
    return _export(tiny_ckpt, tmp_path_factory, "float32")


@pytest.fixture(scope="module")
def fp16(tiny_ckpt, tmp_path_factory) -> Exported:
    return _export(tiny_ckpt, tmp_path_factory, "float16")


def _check(actual: np.ndarray, expected: torch.Tensor, precision: str) -> None:
    expected = expected.detach().float()
    actual = torch.from_numpy(np.asarray(actual)).float()
    assert actual.shape == expected.shape
    if precision == "float32":
        scale = float(expected.abs().max())
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)
    else:
        cosine = torch.nn.functional.cosine_similarity(actual.flatten(), expected.flatten(), dim=0)
        assert cosine >= 0.999, f"cosine {float(cosine):.6f}"


def _both(request, name):
    return request.getfixturevalue(name), "float32" if name == "fp32" else "float16"


# ---- graph I/O, the custom node and its function, external data ---------------------------


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_sessions_match_specs(request, which):
    exported, precision = _both(request, which)
    for spec in exported.specs.values():
        if not spec.is_onnx:
            continue
        session = _session(exported.dir / spec.file)
        for ours, theirs in ((spec.inputs, session.get_inputs()), (spec.outputs, session.get_outputs())):
            assert [t.name for t in ours] == [t.name for t in theirs], spec.name
            assert [list(t.shape) for t in ours] == [list(t.shape) for t in theirs], spec.name
            assert [_ORT_TYPES[t.dtype] for t in ours] == [t.type for t in theirs], spec.name
    table = np.load(exported.dir / S.EMBED_FILE)
    assert table.dtype == np.dtype(precision) and table.shape == tuple(exported.model.embed_tokens.weight.shape)


def test_custom_node_once_per_hybrid_layer_with_contract_attributes(fp32):
    schema = op_schema()
    model = onnx.load(str(fp32.dir / "decoder.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if (n.domain, n.op_type) == (schema["domain"], schema["name"])]
    hybrid = fp32.model.decoder.hybrid_layer_ids
    text = fp32.model.config.text
    assert [n.name for n in nodes] == [f"/decoder/layers.{i}/cross_attn/{schema['name']}" for i in hybrid]
    kinds = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}
    expected = {
        "num_heads": text.num_heads,
        "num_kv_heads": text.num_kv_heads,
        "head_dim": text.head_dim,
        "scale": pytest.approx(text.head_dim**-0.5),
        "fuse_gate": 1,
        "plugin_version": schema["plugin_version"],
        "plugin_namespace": schema["plugin_namespace"],
    }
    for j, node in enumerate(nodes):
        attrs = {a.name: a for a in node.attribute}
        assert sorted(attrs) == sorted(a["name"] for a in schema["attributes"])
        for spec in schema["attributes"]:
            assert attrs[spec["name"]].type == kinds[spec["type"]]
        values = {name: onnx.helper.get_attribute_value(a) for name, a in attrs.items()}
        values = {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
        assert values == expected
        assert len(node.input) == len(schema["inputs"])
        assert list(node.input[1:5]) == [f"slow_key_{j}", f"slow_value_{j}", "slow_lengths", "cross_row_offsets"]
    functions = [(f.domain, f.name) for f in model.functions]
    assert functions == [(schema["domain"], schema["name"])]
    function = model.functions[0]
    assert list(function.input) == [i["name"] for i in schema["inputs"]]
    assert list(function.attribute) == [a["name"] for a in schema["attributes"]]
    assert {(o.domain, o.version) for o in model.opset_import} >= {(schema["domain"], schema["op_version"]), ("", 17)}
    nocross = onnx.load(str(fp32.dir / "decoder_nocross.onnx"), load_external_data=False)
    assert not nocross.functions and all(n.domain == "" for n in nocross.graph.node)


def _regions(path):
    model = onnx.load(str(path), load_external_data=False)
    regions = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            regions[tensor.name] = (info["location"], int(info["offset"]), int(info["length"]))
        else:
            assert len(tensor.raw_data) < INLINE_BYTES, f"{path.name}: {tensor.name} should be external"
    return regions


def test_weights_in_one_external_file_per_graph_and_decoders_share_one(fp32):
    for spec in fp32.specs.values():
        if spec.is_onnx and spec.data_file:  # fast_pool has no weights
            regions = _regions(fp32.dir / spec.file)
            assert regions and {loc for loc, _, _ in regions.values()} == {spec.data_file}, spec.name
    cross = set(_regions(fp32.dir / "decoder.onnx").values())
    nocross = set(_regions(fp32.dir / "decoder_nocross.onnx").values())
    assert nocross <= cross  # no region of its own: the shared weights are stored once
    assert max(o + n for _, o, n in cross) == (fp32.dir / "decoder.onnx.data").stat().st_size
    names = {n.name for n in onnx.load(str(fp32.dir / "vision.onnx"), load_external_data=False).graph.node}
    assert "/vision/stages.0/blocks.0/conv_dw/Conv" in names  # node names read like the model


# ---- vision, projector and fast pooling, slow K/V -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_vision(request, which):
    exported, precision = _both(request, which)
    frames = np.random.default_rng(0).integers(0, 256, (3, 576, 576, 3), dtype=np.uint8)
    for count in (3, 1):  # dynamic N
        got = exported.run(S.VISION, frames=frames[:count])["features"]
        with torch.no_grad():
            want = exported.model.vision(torch.from_numpy(normalize(frames[:count])).to(exported.model.dtype))
        _check(got, want, precision)


def _projector_and_fast_pool(exported, features, frames):
    """frame tokens and fast tokens of ``frames`` frames through projector.onnx and fast_pool.onnx."""
    pooling = pooling_matrices(frames, exported.model.config.visual, 324)
    tokens = exported.run(S.PROJECTOR, features=features, grid_pool=pooling.grid_pool)["frame_tokens"]
    fast = exported.run(S.FAST_POOL, frame_tokens=tokens, temporal_pool=pooling.temporal_pool.numpy(),
                        spatial_pool=pooling.spatial_pool.numpy())["fast_tokens"]
    return tokens.reshape(-1, tokens.shape[-1]), fast.reshape(-1, fast.shape[-1])


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_projector_and_fast_pool(request, which):
    exported, precision = _both(request, which)
    model = exported.model
    for frames in (FRAMES, 7, 1):  # one export, any frame count (1: an image, no video pooling)
        features = torch.randn(frames, 324, model.config.visual.mm_hidden_size, generator=torch.Generator().manual_seed(1))
        features = features.to(model.dtype)
        slow_got, fast_got = _projector_and_fast_pool(exported, features, frames)
        with torch.no_grad():
            slow, fast = encode_visual_tokens(features, model.projector, model.config.visual)
        _check(slow_got, slow, precision)
        _check(fast_got, fast, precision)


@pytest.mark.parametrize("ckpt, frames", [("tiny_ckpt", 16), ("tiny_ckpt_pool3d", FRAMES), ("tiny_ckpt_pool3d", 9)])
def test_pooling_branches_on_one_export(request, tmp_path, ckpt, frames):
    """16 frames: adaptive pooling to 16 (identity); pool3d checkpoint at 32 frames: avg_pool3d,
    at 9 frames adaptive to 4: the same two graphs, exported once for up to 32 frames."""
    model = ReferenceGenerator.load(request.getfixturevalue(ckpt)).model
    specs = {S.PROJECTOR: export_projector(model, tmp_path, "float32", FRAMES, MAX_SEQ),
             S.FAST_POOL: export_fast_pool(model, tmp_path, "float32", FRAMES, MAX_SEQ)}
    assert not (tmp_path / "fast_pool.onnx.data").exists()  # no weights, no data file
    exported = Exported(model, tmp_path, specs)
    features = torch.randn(frames, 324, model.config.visual.mm_hidden_size, generator=torch.Generator().manual_seed(2))
    slow_got, fast_got = _projector_and_fast_pool(exported, features, frames)
    with torch.no_grad():
        slow, fast = encode_visual_tokens(features, model.projector, model.config.visual)
    assert fast_got.shape[0] == S.fast_token_count(model.config, frames)
    _check(slow_got, slow, "float32")
    _check(fast_got, fast, "float32")


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_slow_kv(request, which):
    exported, precision = _both(request, which)
    model = exported.model
    for count in (11, 37):  # dynamic Ns
        slow = torch.randn(1, count, model.config.text.hidden_size, generator=torch.Generator().manual_seed(count))
        slow = slow.to(model.dtype)
        got = exported.run(S.SLOW_KV, slow_tokens=slow)
        with torch.no_grad():
            keys, values = model.decoder.slow_kv(slow)
        for j, (k, v) in enumerate(zip(keys, values)):
            _check(got[f"slow_key_{j}"], k, precision)
            _check(got[f"slow_value_{j}"], v, precision)


# ---- decoder -----------------------------------------------------------------------------------


def _decoder_case(model, seq, past, attend, slow_tokens=30, slow_length=27, seed=0):
    """Inputs for both the torch decoder and the ONNX graph; slow padding poisoned."""
    text = model.config.text
    gen = torch.Generator().manual_seed(seed)
    dtype = model.dtype

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    layers, hybrid = text.num_layers, len(model.decoder.hybrid_layer_ids)
    kv = (text.num_kv_heads, text.head_dim)
    case = {
        "embeds": rand(1, seq, text.hidden_size),
        "positions": torch.arange(past, past + seq)[None],
        "past_keys": [rand(1, past, *kv) for _ in range(layers)],
        "past_values": [rand(1, past, *kv) for _ in range(layers)],
        "slow_keys": [rand(1, kv[0], slow_tokens, kv[1]) for _ in range(hybrid)],
        "slow_values": [rand(1, kv[0], slow_tokens, kv[1]) for _ in range(hybrid)],
        "lengths": torch.tensor([slow_length], dtype=torch.int32),
    }
    for tensor in case["slow_keys"] + case["slow_values"]:
        tensor[:, :, slow_length:] = 1e4  # must not be read
    case["rows"], case["offsets"] = attend_to_rows(attend)
    return case


def _torch_decoder(model, case, cross: bool):
    kwargs = {}
    if cross:
        kwargs = dict(
            slow_keys=case["slow_keys"],
            slow_values=case["slow_values"],
            slow_lengths=case["lengths"],
            cross_rows=case["rows"],
            cross_row_offsets=case["offsets"],
        )
    with torch.no_grad():
        return model.decoder(case["embeds"], case["positions"], case["past_keys"], case["past_values"], **kwargs)


def _onnx_decoder(exported, case, cross: bool):
    feeds = {"inputs_embeds": case["embeds"], "position_ids": case["positions"],
             "past_length": torch.tensor([case["past_keys"][0].shape[1]])}
    for i, (k, v) in enumerate(zip(case["past_keys"], case["past_values"])):
        feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = k, v
    if cross:
        for j, (k, v) in enumerate(zip(case["slow_keys"], case["slow_values"])):
            feeds[f"slow_key_{j}"], feeds[f"slow_value_{j}"] = k, v
        feeds.update(slow_lengths=case["lengths"], cross_rows=case["rows"], cross_row_offsets=case["offsets"])
    return exported.run(S.DECODER if cross else S.DECODER_NOCROSS, **feeds)


def _check_decoder(got, want, precision):
    logits, keys, values = want
    _check(got["logits"], logits, precision)
    for i, (k, v) in enumerate(zip(keys, values)):
        _check(got[f"new_key_{i}"], k, precision)
        _check(got[f"new_value_{i}"], v, precision)


def _prefill_rows(seq=20):
    attend = torch.zeros(seq, dtype=torch.bool)
    attend[:5] = True  # text before the video; rows 5..11 play the fast tokens
    attend[12:] = True
    return attend


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_decoder_prefill(request, which):
    exported, precision = _both(request, which)
    case = _decoder_case(exported.model, seq=20, past=0, attend=_prefill_rows())
    want = _torch_decoder(exported.model, case, cross=True)
    _check_decoder(_onnx_decoder(exported, case, cross=True), want, precision)
    without = _torch_decoder(exported.model, case, cross=False)[0]
    assert (want[0].float() - without.float()).abs().max() > 1e-2  # the slow path is exercised


@pytest.mark.parametrize("which", ["fp32", "fp16"])
@pytest.mark.parametrize("rows", [0, 1])
def test_decoder_decode_step(request, which, rows):
    exported, precision = _both(request, which)
    case = _decoder_case(exported.model, seq=1, past=20, attend=torch.full((1,), bool(rows)), seed=1)
    _check_decoder(
        _onnx_decoder(exported, case, cross=True), _torch_decoder(exported.model, case, cross=True), precision
    )


@pytest.mark.parametrize("which", ["fp32", "fp16"])
@pytest.mark.parametrize("seq, past", [(1, 20), (20, 0)])
def test_decoder_nocross(request, which, seq, past):
    exported, precision = _both(request, which)
    case = _decoder_case(exported.model, seq=seq, past=past, attend=torch.zeros(seq, dtype=torch.bool), seed=2)
    _check_decoder(
        _onnx_decoder(exported, case, cross=False), _torch_decoder(exported.model, case, cross=False), precision
    )


def test_zero_slow_length_row_equals_no_cross_attention(fp32):
    """One attending row with slow_lengths = 0 gives the no-cross result (contract: ctx = 0):
    a way to serve ``upstream`` decode with the cross graph and no empty tensor."""
    case = _decoder_case(fp32.model, seq=1, past=20, attend=torch.ones(1, dtype=torch.bool), slow_length=0, seed=3)
    got = _onnx_decoder(fp32, case, cross=True)
    plain = _onnx_decoder(fp32, case, cross=False)
    for name, value in plain.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
