"""CPU checks of the slowFastCrossAttn build: extension import, contract, host-side planning and
validation of the C++ launcher, the torch wrapper's errors, and the PyTorch reference against an
independent naive float64 computation. Nothing here touches CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from slowfast_trt.ops.cross_attention import kernel as kernels
from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager

CONTRACT = op_schema()
ALIGNED = 1 << 20  # fake, 16-byte aligned "device" address: validation fails before any CUDA call


@pytest.fixture(scope="module")
def ext():
    if not kernels.build_info().get("kernels", {}).get("built"):
        pytest.skip(f"kernels not built: {kernels.build_info().get('kernels', {}).get('reason', 'no build info')}")
    import slowfast_trt._kernels as module  # must import without a GPU (static cudart, no CUDA call)

    return module


# ---- build and contract -------------------------------------------------------------------------------


def test_build_info_is_coherent():
    info = kernels.build_info()
    assert info["found"], info
    assert info["schema"]["op_name"] == CONTRACT["name"]
    assert info["schema"]["op_version"] == CONTRACT["op_version"]
    assert info["schema"]["plugin_version"] == CONTRACT["plugin_version"]
    assert info["schema"]["plugin_namespace"] == CONTRACT["plugin_namespace"]
    for part in ("kernels", "module", "plugin"):
        assert info[part]["built"] or info[part]["reason"], f"{part} skipped without a reason"
    assert kernels.is_available() == info["module"]["built"]
    if info["module"]["built"]:
        assert info["kernels"]["built"] and info["kernels"]["cuda_architectures"]
    if info["plugin"]["built"]:
        assert info["plugin"]["tensorrt_version"]
        assert kernels.plugin_library_path() is not None and kernels.plugin_library_path().is_file()
    else:
        assert kernels.plugin_library_path() is None


def test_extension_imports_without_gpu(ext):
    assert ext.device_count() >= 0  # 0 here: no driver is fine
    assert ext.built_architectures() == kernels.build_info()["kernels"]["cuda_architectures"]
    assert tuple(ext.supported_head_dims) == kernels.SUPPORTED_HEAD_DIMS


def test_schema_compiled_into_cpp_equals_contract(ext):
    schema = ext.schema()
    for key in ("name", "domain", "op_version", "plugin_version", "plugin_namespace"):
        assert schema[key] == CONTRACT[key], key
    assert [(a["name"], a["type"]) for a in schema["attributes"]] == [
        (a["name"], a["type"]) for a in CONTRACT["attributes"]
    ]
    assert [(i["name"], i["type"], i["optional"]) for i in schema["inputs"]] == [
        (i["name"], i["dtype"], i.get("optional", False)) for i in CONTRACT["inputs"]
    ]
    assert [o["name"] for o in schema["outputs"]] == [o["name"] for o in CONTRACT["outputs"]]


# ---- host-side planning of the C++ launcher ------------------------------------------------------------


def test_decode_splits_the_slow_tokens_across_the_gpu(ext):
    for slow_tokens in (5184, 7776, 10368):
        plan = ext.plan("float16", 1, 1, 28, 4, 128, slow_tokens, 132)
        assert plan["backend"] == "mma" and plan["block_rows"] == 16
        blocks = 4 * plan["num_splits"]
        assert blocks >= 132, plan  # one row x 7 heads per kv head must still fill an H200
        assert plan["num_splits"] <= ext.max_splits
        assert plan["workspace_bytes"] == plan["num_splits"] * 1 * 28 * (128 + 1) * 4


def test_plan_picks_backend_and_block_shape(ext):
    assert ext.plan("float32", 1, 1, 28, 4, 128, 5184, 132)["backend"] == "simt"
    assert ext.plan("bfloat16", 200, 1, 28, 4, 128, 5184, 132)["block_rows"] == 64  # prefill tile
    assert ext.plan("float16", 64, 64, 28, 4, 128, 5184, 132)["block_rows"] == 16  # batched decode
    assert ext.plan("float16", 200, 1, 28, 4, 128, 5184, 132, "simt")["backend"] == "simt"
    one = ext.plan("float16", 2000, 1, 28, 4, 128, 5184, 132)
    assert one["num_splits"] == 1 and one["workspace_bytes"] == 0  # enough tiles: no combine pass
    forced = ext.plan("float16", 3, 1, 28, 4, 128, 100, 132, "auto", 7)
    assert forced["num_splits"] == 7


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_workspace_bound_covers_every_plan(ext, dtype):
    # What the TensorRT plugin reserves for a profile (rows <= 96, tokens <= 10368) covers every launch.
    bound = ext.workspace_size(dtype, 96, 8, 28, 4, 128, 10368)
    for rows in (1, 2, 7, 30, 64, 96):
        for batch in (1, 2, rows):
            for tokens in (1, 64, 1296, 5184, 10368):
                for sms in (16, 108, 132, 256):
                    for backend in (["auto", "simt"] if dtype == "float16" else ["auto"]):
                        plan = ext.plan(dtype, rows, batch, 28, 4, 128, tokens, sms, backend)
                        assert plan["workspace_bytes"] <= bound, (rows, batch, tokens, sms, plan)
    assert ext.workspace_size(dtype, 200, 1, 28, 4, 128, 10368) >= bound  # monotone in rows


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"head_dim": 96}, "head_dim must be 64 or 128"),
        ({"num_kv_heads": 5}, "must be a multiple of num_kv_heads"),
        ({"dtype": "float64"}, "dtype must be"),
        ({"backend": "tensor"}, "backend must be"),
        ({"dtype": "float32", "backend": "mma"}, "float16 and bfloat16 only"),
        ({"num_splits": 65}, "num_splits must be in"),
        ({"query": ALIGNED + 4}, "query must be 16-byte aligned"),
        ({"residual": ALIGNED}, "gate must not be null"),
        ({"slow_lengths": 0}, "slow_lengths must not be null"),
        ({"batch": 0}, "batch"),
    ],
)
def test_launcher_validation_happens_before_cuda(ext, overrides, message):
    args = dict(dtype="float16", rows=3, batch=1, num_heads=28, num_kv_heads=4, head_dim=128, slow_tokens=81,
                scale=0.1, query=ALIGNED, slow_key=ALIGNED, slow_value=ALIGNED, slow_lengths=ALIGNED,
                row_offsets=ALIGNED, residual=0, gate=0, output=ALIGNED, workspace=0, workspace_bytes=0,
                stream=0, num_sms=132, sm_version=90, backend="auto", num_splits=0)
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        ext.launch(**args)


# ---- the torch wrapper's errors (raised before the extension or a device is needed) --------------------


def _inputs(rows=3, heads=4, kv_heads=2, head_dim=64, batch=2, tokens=5, dtype=torch.float16, fuse=False):
    t = {
        "query": torch.zeros(rows, heads, head_dim, dtype=dtype),
        "slow_key": torch.zeros(batch, kv_heads, tokens, head_dim, dtype=dtype),
        "slow_value": torch.zeros(batch, kv_heads, tokens, head_dim, dtype=dtype),
        "slow_lengths": torch.full((batch,), tokens, dtype=torch.int32),
        "row_offsets": torch.tensor([0] + [rows] * batch, dtype=torch.int32),
    }
    if fuse:
        t["residual"] = torch.zeros(rows, heads * head_dim, dtype=dtype)
        t["gate"] = torch.zeros(rows, 1, dtype=dtype)
    return t


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(query=torch.zeros(3, 4, 96, dtype=torch.float16)), "head_dim"),
        (lambda t: t.update(query=torch.zeros(3, 4, 64, dtype=torch.float64)), "query dtype"),
        (lambda t: t.update(slow_key=t["slow_key"].float()), "slow_key must be torch.float16"),
        (lambda t: t.update(slow_value=t["slow_value"][:, :, :4].clone()), "slow_value must have shape"),
        (lambda t: t.update(slow_key=torch.zeros(2, 1, 5, 64, dtype=torch.float16)), "slow_key must have shape"),
        (lambda t: t.update(slow_lengths=t["slow_lengths"].long()), "slow_lengths must be torch.int32"),
        (lambda t: t.update(row_offsets=t["row_offsets"][:2]), r"row_offsets must have shape \(3,\)"),
        (lambda t: t.update(residual=torch.zeros(3, 256, dtype=torch.float16)), "given together"),
        (lambda t: t.update(query=t["query"].transpose(0, 1).contiguous().transpose(0, 1)), "contiguous"),
        (lambda t: None, "must be a CUDA tensor"),
    ],
)
def test_wrapper_rejects_contract_violations(change, message):
    t = _inputs()
    change(t)
    with pytest.raises(ValueError, match=message):
        kernels.cross_attention(**t, num_heads=4, num_kv_heads=2, scale=0.125)


def test_wrapper_checks_attributes_and_gate_shape():
    with pytest.raises(ValueError, match="num_heads"):
        kernels.cross_attention(**_inputs(), num_heads=8, num_kv_heads=2, scale=0.1)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        kernels.cross_attention(**_inputs(kv_heads=3, heads=4), num_heads=4, num_kv_heads=3, scale=0.1)
    t = _inputs(fuse=True)
    t["gate"] = torch.zeros(3, dtype=torch.float16).view(3, 1).expand(3, 2)
    with pytest.raises(ValueError, match="gate"):
        kernels.cross_attention(**t, num_heads=4, num_kv_heads=2, scale=0.1)


# ---- the PyTorch reference against an independent naive float64 computation ---------------------------


def _naive(query, key, value, lengths, offsets, residual, gate, scale):
    """Scalar loops over (row, head, token) in Python floats: no einsum, no views, no softmax helper."""
    rows, heads, dim = query.shape
    kv_heads = key.shape[1]
    out = torch.zeros(rows, heads * dim, dtype=torch.float64)
    for b in range(len(lengths)):
        n = int(lengths[b])
        for r in range(int(offsets[b]), int(offsets[b + 1])):
            for h in range(heads):
                g = h // (heads // kv_heads)
                scores = [scale * sum(float(query[r, h, d]) * float(key[b, g, j, d]) for d in range(dim))
                          for j in range(n)]
                top = max(scores) if scores else 0.0
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for d in range(dim):
                    ctx = sum(w * float(value[b, g, j, d]) for j, w in enumerate(weights)) / total if n else 0.0
                    if residual is not None:
                        ctx = float(residual[r, h * dim + d]) + float(gate[r, 0]) * ctx
                    out[r, h * dim + d] = ctx
    return out


@pytest.mark.parametrize(
    "heads, kv_heads, lengths, row_counts, fuse",
    [
        (6, 2, [5, 3, 0], [2, 1, 2], False),  # GQA, ragged lengths, one sequence without slow tokens
        (4, 4, [7], [3], False),  # MHA
        (4, 1, [2, 6], [0, 3], True),  # MQA, a sequence without rows, fused gate
        (6, 3, [1, 0], [1, 1], True),  # single key; zero length with the gate -> residual
    ],
)
def test_reference_matches_naive_float64(heads, kv_heads, lengths, row_counts, fuse):
    gen = torch.Generator().manual_seed(0)
    dim, tokens = 4, 8
    rows = sum(row_counts)
    query = torch.randn(rows, heads, dim, generator=gen, dtype=torch.float64)
    key = torch.randn(len(lengths), kv_heads, tokens, dim, generator=gen, dtype=torch.float64)
    value = torch.randn(len(lengths), kv_heads, tokens, dim, generator=gen, dtype=torch.float64)
    for b, n in enumerate(lengths):  # padding must never be read
        key[b, :, n:] = float("nan")
        value[b, :, n:] = float("nan")
    offsets = torch.tensor([0] + list(torch.tensor(row_counts).cumsum(0)), dtype=torch.int32)
    lengths_t = torch.tensor(lengths, dtype=torch.int32)
    residual = torch.randn(rows, heads * dim, generator=gen, dtype=torch.float64) if fuse else None
    gate = torch.randn(rows, 1, generator=gen, dtype=torch.float64) if fuse else None

    got = cross_attention_eager(query, key, value, lengths_t, offsets, residual, gate, scale=0.7)
    want = _naive(query, key, value, lengths, offsets.tolist(), residual, gate, 0.7)
    assert got.dtype == torch.float64 and got.shape == (rows, heads * dim)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reference_in_low_precision_stays_close():
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(5, 8, 64, generator=gen)
    key = torch.randn(2, 2, 40, 64, generator=gen)
    value = torch.randn(2, 2, 40, 64, generator=gen)
    lengths = torch.tensor([40, 17], dtype=torch.int32)
    offsets = torch.tensor([0, 2, 5], dtype=torch.int32)
    exact = cross_attention_eager(query.double(), key.double(), value.double(), lengths, offsets, scale=0.125)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 5e-3), (torch.bfloat16, 4e-2)):
        low = cross_attention_eager(query.to(dtype), key.to(dtype), value.to(dtype), lengths, offsets, scale=0.125)
        assert low.dtype == dtype
        assert (low.double() - exact).abs().max() < tol, dtype


def test_missing_extension_gives_a_clear_error(monkeypatch):
    def fail(name):
        raise ImportError(f"No module named {name!r}")

    kernels._module.cache_clear()
    monkeypatch.setattr(kernels.importlib, "import_module", fail)
    try:
        assert not kernels.is_available()
        with pytest.raises(RuntimeError, match="slowfast_trt._kernels is not available"):
            kernels._module()
    finally:
        monkeypatch.undo()
        kernels._module.cache_clear()
