"""TensorRT build plan (profiles, precision flags, timing cache, manifests, compatibility) and
the parser input (functions stripped). No TensorRT here: trt_build is only checked to fail
clearly without it."""

from __future__ import annotations

import importlib.util
import json
import re

import onnx
import pytest

from slowfast_trt.models.slowfast.config import SlowFastConfig
from slowfast_trt.models.slowfast import specs as S
from slowfast_trt.export import trt_plan as P

FRAMES, MAX_SEQ = 32, 512
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def config(tiny_ckpt):
    return SlowFastConfig.from_file(tiny_ckpt / "config.json")


@pytest.fixture(scope="module")
def specs(config):
    return S.subgraph_specs(config, "float16", FRAMES, MAX_SEQ)


def _dims(profile: P.Profile, spec: S.SubgraphSpec) -> dict[str, tuple[int, int, int]]:
    """Named dim -> (min, opt, max), checked consistent over every input that has it."""
    found = {}
    shapes = {name: (lo, opt, hi) for name, lo, opt, hi in profile.shapes}
    for t in spec.inputs:
        for axis, dim in enumerate(t.shape):
            if isinstance(dim, str):
                triple = tuple(s[axis] for s in shapes[t.name])
                assert found.setdefault(dim, triple) == triple, (t.name, dim)
            elif t.name in shapes:
                assert all(s[axis] == dim for s in shapes[t.name])
    return found


def test_profiles_cover_every_dynamic_input(specs):
    plans = P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ)
    assert set(plans) == {S.VISION, S.PROJECTOR, S.FAST_POOL, S.SLOW_KV, S.DECODER, S.DECODER_NOCROSS}  # not the .npy table
    assert [len(plans[n].profiles) for n in plans] == [1, 1, 1, 1, 2, 2]
    for name, plan in plans.items():
        spec = specs[name]
        dynamic = {t.name for t in spec.inputs if any(isinstance(d, str) for d in t.shape)}
        for profile in plan.profiles:
            assert {s[0] for s in profile.shapes} == dynamic
            for dim, (lo, opt, hi) in _dims(profile, spec).items():
                spec_lo, spec_hi = spec.dim_range(dim)
                assert spec_lo <= lo <= opt <= hi <= spec_hi, (name, profile.name, dim)


def test_frame_range_profiles_cover_one_frame_to_max_frames(specs):
    """One set of engines for 1..FRAMES frames: a streamed frame, an image and the longest video."""
    plans = P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ, opt_frames=16)
    projector = _dims(plans[S.PROJECTOR].profiles[0], specs[S.PROJECTOR])
    assert projector == {"frames": (1, 16, FRAMES), "tokens_per_frame": (81, 81, 324)}  # 324: an image's grid
    pool = _dims(plans[S.FAST_POOL].profiles[0], specs[S.FAST_POOL])
    assert pool["frames"] == (1, 16, FRAMES) and pool["fast_frames"] == (1, 16, 16)
    assert pool["fast_tokens_per_frame"] == (81, 81, 324)


def test_decoder_has_prefill_and_decode_profiles_in_one_engine(specs, config):
    plan = P.plan_engines(specs, "int4-awq", FRAMES, MAX_SEQ)[S.DECODER]
    prefill, decode = (_dims(p, specs[S.DECODER]) for p in plan.profiles)
    assert [p.name for p in plan.profiles] == ["prefill", "decode"]
    fast = S.fast_token_count(config, FRAMES)
    assert prefill["seq"] == (1, min(fast + P.PROMPT_TEXT_TOKENS, MAX_SEQ), MAX_SEQ)  # profile 0 covers every step
    assert prefill["past"] == (0, 0, MAX_SEQ - 1) and prefill["rows"][0] == 0
    # static decode step: one row over the whole cache, every shape fixed (a CUDA graph replays it)
    assert decode["seq"] == (1, 1, 1) and decode["rows"] == (0, 1, 1) and decode["past"] == (MAX_SEQ,) * 3
    slow = FRAMES * 81
    # Text-only prompts feed one dummy slow token, videos up to the most frames' slow tokens.
    assert prefill["slow_tokens"] == decode["slow_tokens"] == (1, slow, slow)


def test_jetson_bounds_prefill_rows_and_drops_nocross(specs):
    plans = P.plan_engines(specs, "int4-awq", FRAMES, MAX_SEQ, max_prefill_rows=200, include_nocross=False)
    assert S.DECODER_NOCROSS not in plans
    prefill, decode = (_dims(p, specs[S.DECODER]) for p in plans[S.DECODER].profiles)
    assert prefill["seq"][2] == prefill["rows"][2] == 200 and prefill["past"][2] == MAX_SEQ - 1
    assert decode["seq"] == (1, 1, 1)


def test_vision_and_slow_kv_profiles(specs):
    plans = P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ, vision_batch=8, frame_counts=(16, 32), opt_frames=16)
    assert _dims(plans[S.VISION].profiles[0], specs[S.VISION]) == {"frames": (1, 8, 8)}
    per_frame = 81
    # min: one streamed frame's tokens; opt: the default frame count's; max: the most frames'
    assert _dims(plans[S.SLOW_KV].profiles[0], specs[S.SLOW_KV])["slow_tokens"] == (per_frame, 16 * per_frame, 32 * per_frame)
    assert _dims(P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ)[S.VISION].profiles[0], specs[S.VISION])["frames"] == (1, FRAMES, FRAMES)
    with pytest.raises(ValueError, match="vision_batch"):
        P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ, vision_batch=FRAMES + 1)
    with pytest.raises(ValueError, match="leaves the spec"):
        P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ, frame_counts=(64,))  # more slow tokens than the graphs allow


@pytest.mark.parametrize(
    "precision,dtype,typed,flags,cleared",
    [("fp32", "float32", False, (), ("TF32",)), ("fp16", "float16", True, (), ()),
     ("float16", "float16", True, (), ()), ("bf16", "float32", False, ("BF16",), ()),
     ("int4-awq", "float16", True, (), ())],
)
def test_precision_flags(specs, precision, dtype, typed, flags, cleared):
    plans = P.plan_engines(specs, precision, FRAMES, MAX_SEQ)
    for name, plan in plans.items():
        assert (plan.onnx_dtype, plan.strongly_typed, plan.builder_flags, plan.cleared_flags) == (dtype, typed, flags, cleared)
        assert plan.int4_weights == (precision == "int4-awq" and name in (S.DECODER, S.DECODER_NOCROSS))
    with pytest.raises(ValueError, match="precision must be one of"):
        P.plan_engines(specs, "int8", FRAMES, MAX_SEQ)


def test_profile_needs_a_range_for_every_dim(specs):
    with pytest.raises(ValueError, match="no range for dim 'past'"):
        P.profile_shapes(specs[S.DECODER_NOCROSS], "x", {"seq": (1, 1, 1)})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        P.profile_shapes(specs[S.VISION], "x", {"frames": (2, 1, 3)})


def test_timing_cache_and_compute_capability_names(tmp_path):
    assert P.timing_cache_path(tmp_path, "10.3.0.30", (8, 7)) == tmp_path / "timing_trt10.3.0_sm87.cache"
    assert P.timing_cache_path(tmp_path, "10.16", "sm_90") == tmp_path / "timing_trt10.16.0_sm90.cache"
    for form in ("8.7", (8, 7), "sm_87", "87", "sm87"):
        assert P._cc_text(form) == "8.7"
    assert P._cc_text("12.0") == "12.0" and P._cc_text("120") == "12.0"
    with pytest.raises(ValueError, match="compute capability"):
        P._cc_text("ampere")


def test_engine_manifest_build_log_and_compat(specs):
    plan = P.plan_engines(specs, "int4-awq", FRAMES, MAX_SEQ)[S.DECODER]
    entry = {"file": "decoder.engine", **plan.to_json()}
    manifest = P.engine_manifest("10.3.0.30", (8, 7), "Orin", "int4-awq", {S.DECODER: entry})
    manifest = json.loads(json.dumps(manifest))  # as read back from engines.json
    assert manifest["tensorrt_version"] == "10.3.0.30" and manifest["compute_capability"] == "8.7"
    assert [p["name"] for p in manifest["engines"]["decoder"]["profiles"]] == ["prefill", "decode"]
    P.check_engine_compat(manifest, "10.3.0.26", "8.7")  # the build number may differ
    P.check_engine_compat({"tensorrt": manifest}, "10.3.0", (8, 7))
    for version, cc, why in (("10.4.0", "8.7", "TensorRT 10.3.0.30"), ("10.3.0", "9.0", "compute capability 8.7")):
        with pytest.raises(ValueError, match=f"{why}.*rebuild the engines"):
            P.check_engine_compat(manifest, version, cc)
    with pytest.raises(ValueError, match="rebuild the engines"):
        P.check_engine_compat({"engines": {}}, "10.3.0", "8.7")
    log = P.build_log_entry(plan, "decoder.trt.onnx", "decoder.engine", 12.34567, 1000,
                            [("INFO", "x"), ("WARNING", "w"), ("ERROR", "e")], "/c/t.cache")
    assert log["build_seconds"] == 12.346 and [m["severity"] for m in log["messages"]] == ["WARNING", "ERROR"]
    json.dumps(log)


def test_parser_gets_the_stripped_graph(tiny_ckpt, tmp_path):
    from slowfast_trt.export.subgraphs import export_decoder
    from slowfast_trt.models.slowfast.reference import ReferenceGenerator

    model = ReferenceGenerator.load(tiny_ckpt).model
    export_decoder(model, tmp_path, "float32", FRAMES, MAX_SEQ)
    source = tmp_path / "decoder.onnx"
    assert onnx.load(str(source), load_external_data=False).functions  # ONNX Runtime needs it
    parsed = P.prepare_onnx_for_parser(source)
    assert parsed.name == "decoder.trt.onnx"
    stripped = onnx.load(str(parsed), load_external_data=False)
    assert not stripped.functions
    assert sum(n.op_type == "SlowFastCrossAttention" for n in stripped.graph.node) == len(model.decoder.hybrid_layer_ids)
    assert P.prepare_onnx_for_parser(parsed) == parsed  # already stripped: parsed as is


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_trt_build_fails_clearly_without_tensorrt(specs, tmp_path):
    from slowfast_trt.export import trt_build

    with pytest.raises(ValueError, match="TensorRT is not available.*--onnx-only"):
        trt_build.build_engines(tmp_path, {}, specs, precision="fp16", frames=FRAMES, max_seq_len=MAX_SEQ)


def _export_folder(tiny_ckpt, tmp_path, precision="int4-awq"):
    folder = tmp_path / "export"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    subgraphs = {"decoder": {"file": "decoder.onnx", "trt_file": "decoder.trt.onnx"}, "vision": {"file": "vision.onnx"}}
    manifest = {"format": 1, "package_version": "x", "source": {}, "precision": precision, "frames": 16, "max_frames": FRAMES,
                "max_seq_len": MAX_SEQ, "subgraphs": subgraphs, "custom_op": {}, "backend": "onnxruntime", "engines": None}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_engines_for_an_existing_export_folder(tiny_ckpt, tmp_path):
    folder = _export_folder(tiny_ckpt, tmp_path)
    found = P.folder_inputs(folder)
    assert (found["precision"], found["frames"], found["max_seq_len"]) == ("int4-awq", FRAMES, MAX_SEQ)
    assert found["opt_frames"] == 16
    assert found["specs"][S.DECODER].inputs[0].dtype == "float16"  # int4-awq: fp16 activations
    assert found["trt_files"] == {"decoder": "decoder.trt.onnx", "vision": "vision.onnx"}
    (folder / "decoder.engine").write_bytes(b"\0" * 10)
    manifest = P.record_engines(folder, found["manifest"], {"decoder": "decoder.engine"})
    assert json.loads((folder / "manifest.json").read_text())["engines"] == {"decoder": "decoder.engine"}
    assert manifest["backend"] == "tensorrt" and manifest["files"]["decoder.engine"] == 10
    bf16 = P.folder_inputs(_export_folder(tiny_ckpt, tmp_path / "b", "bf16"))
    assert bf16["specs"][S.DECODER].inputs[0].dtype == "float32"  # bf16 engines come from float32 ONNX


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_trt_build_cli_without_tensorrt(tiny_ckpt, tmp_path, capsys):
    from slowfast_trt.cli import trt_build

    assert trt_build.main([str(_export_folder(tiny_ckpt, tmp_path)), "--vision-batch", "8"]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err


def test_engine_folder_checked_before_deserializing(specs, tmp_path):
    """What the TensorRT runtime does first: engines.json as build_engines writes it, checked
    against this TensorRT version and GPU (plain values, as tensorrt and torch.cuda report them)."""
    plans = P.plan_engines(specs, "fp16", FRAMES, MAX_SEQ)
    entries = {name: {"file": f"{name}.engine", **plan.to_json()} for name, plan in plans.items()}
    P.write_json(tmp_path / P.ENGINE_MANIFEST_NAME, P.engine_manifest("10.3.0.30", (8, 7), "Orin", "fp16", entries))
    manifest = P.check_engine_folder(tmp_path, "10.3.0.30", (8, 7))
    assert manifest["engines"]["decoder"]["file"] == "decoder.engine"
    for version, cc, why in (("10.7.0.23", (8, 7), "TensorRT 10.3.0.30, this is TensorRT 10.7.0.23"),
                             ("10.3.0.30", (9, 0), "compute capability 8.7, this GPU is 9.0")):
        with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path))}: engines built .*{why}.*rebuild the engines") as info:
            P.check_engine_folder(tmp_path, version, cc)
        assert "\n" not in str(info.value)  # the CLIs print it as one line
    (tmp_path / P.ENGINE_MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="engines.json: unreadable.*rebuild the engines"):
        P.check_engine_folder(tmp_path, "10.3.0.30", (8, 7))
    (tmp_path / P.ENGINE_MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match="engines.json is missing.*rebuild the engines"):
        P.check_engine_folder(tmp_path, "10.3.0.30", (8, 7))
