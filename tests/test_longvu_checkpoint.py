"""LongVU loading: the upstream layout, towers from the Hugging Face cache or folders, bad input,
the config reader, the family registry, the qwen template and the 1 fps sampling."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from longvu_helpers import golden, write_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("longvu_ckpt"), hub=True)


@pytest.fixture()
def offline_hub(monkeypatch):
    """Point huggingface_hub at a cache folder, offline (what HF_HOME=... HF_HUB_OFFLINE=1 does)."""
    from huggingface_hub import constants

    def use(hf_home):
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return use


def test_towers_from_the_hub_cache_offline(folders, offline_hub):
    from slowfast_trt.models.longvu.checkpoint import load_model

    offline_hub(folders["hf_home"])
    from_cache = load_model(folders["checkpoint"], vocab_rows=449)
    from_dirs = load_model(folders["checkpoint"], vocab_rows=449, siglip=folders["siglip"], dino=folders["dino"])
    assert from_cache.folders.siglip.parts[-3] == "models--google--siglip-so400m-patch14-384"
    for (name, a), (_, b) in zip(from_cache.state_dict().items(), from_dirs.state_dict().items()):
        assert torch.equal(a, b), name
    assert from_cache.embed_tokens.weight.shape[0] == 449  # resize_token_embeddings(len(tokenizer))


def test_missing_tower_is_one_line(folders, offline_hub, tmp_path):
    from slowfast_trt.models.longvu.checkpoint import load_model

    (tmp_path / "hub").mkdir()
    offline_hub(tmp_path)
    with pytest.raises(ValueError) as err:
        load_model(folders["checkpoint"], dino=folders["dino"])
    message = str(err.value)
    assert "\n" not in message and "google/siglip-so400m-patch14-384" in message and "--siglip" in message


def test_tower_of_the_wrong_width(folders, tmp_path):
    from slowfast_trt.fixtures.tiny_longvu import TinyLongVUSpec, write_tiny_vision_towers
    from slowfast_trt.models.longvu.checkpoint import load_model

    wrong = write_tiny_vision_towers(TinyLongVUSpec(dino_hidden=56), directory=tmp_path)
    with pytest.raises(ValueError, match=r"DINOv2 tower of width 56, but the checkpoint's mm_projector_aux_1 takes 40"):
        load_model(folders["checkpoint"], siglip=folders["siglip"], dino=wrong["dino"])
    with pytest.raises(ValueError, match=r"not a SigLIP tower"):
        load_model(folders["checkpoint"], siglip=folders["dino"], dino=folders["dino"])


def test_renamed_or_misshaped_tensor(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    from slowfast_trt.models.longvu.checkpoint import load_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(folders["checkpoint"], ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.vision_sampler_0.layers.0.proj_in.weight"] = tensors["model.vision_sampler_0.layers.0.proj_in.weight"][:, :8].contiguous()
    tensors["model.image_newline_renamed"] = tensors.pop("model.image_newline")
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_model(ckpt, siglip=folders["siglip"], dino=folders["dino"])
    message = str(err.value)
    assert "\n" not in message and "missing tensors: connector.image_newline" in message
    assert "unexpected tensors: model.image_newline_renamed" in message and "proj_in.weight [32, 8]" in message


@pytest.mark.parametrize(("key", "value", "match"), [
    ("mm_projector_type", "mlp", "mm_projector_type"),
    ("mm_vision_tower_aux_list", ["facebook/dinov2-giant", "siglip"], "SigLIP tower first"),
    ("frame_pos", True, "frame_pos"),
    ("query_num_list", [144, 64], "query_num_list"),
    ("tokenizer_model_max_length", None, "tokenizer_model_max_length"),
])
def test_config_errors_name_the_key(folders, key, value, match):
    from slowfast_trt.models.longvu.config import LongVUConfig

    raw = json.loads((folders["checkpoint"] / "config.json").read_text())
    raw[key] = value
    with pytest.raises(ValueError, match=match):
        LongVUConfig.from_dict(raw)


def test_registry_knows_both_families(folders):
    from slowfast_trt.models.registry import family_named, family_of_checkpoint

    family = family_of_checkpoint(folders["checkpoint"])
    assert family is family_named("longvu") and family.prompt_template == "qwen"
    assert family.read_config(folders["checkpoint"]).max_length == 1024


def test_qwen_template_keeps_the_question_verbatim():
    from slowfast_trt.models.longvu.prompt import LongVUConversation

    conv = LongVUConversation()
    conv.add_question("  Describe this video in detail")
    assert conv.prompt_text() == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "  Describe this video in detail<|im_end|>\n<|im_start|>assistant\n"
    )
    assert golden()["cases"]["mix"]["prompt"] == conv.prompt_text().replace("  Describe", "Describe")


def _write_mp4(path, rate: str, count: int):
    from slowfast_trt.fixtures.longvu_video import make_video

    frames = make_video(64, 96, [[e, 1] for e in range(count)], seed=3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"qscale": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("name", list(golden()["sampling"]["cases"]))
def test_one_frame_per_second_as_upstream(tmp_path, name):
    from slowfast_trt.models.longvu.sampling import sample_video

    case = golden()["sampling"]["cases"][name]
    path = tmp_path / f"{name}.mp4"
    _write_mp4(path, case["encoded_rate"], case["frames_written"])
    frames = sample_video(path)
    assert frames.total_frames == case["len_vr"] and abs(frames.avg_fps - case["avg_fps"]) < 1e-9
    assert frames.indices.tolist() == case["frame_indices"]
    assert list(frames.frames.shape) == case["shape"]


def test_rate_below_half_a_frame_per_second(tmp_path):
    from slowfast_trt.models.longvu.sampling import sample_video
    from slowfast_trt.video import VideoError

    path = tmp_path / "slow.mp4"
    _write_mp4(path, "2/5", 3)
    with pytest.raises(VideoError, match="rounds to 0"):
        sample_video(path)


def test_frames_of_one_frame_size_give_one_mask():
    from slowfast_trt.models.longvu.config import LongVUConfig
    from slowfast_trt.models.longvu.tokens import cell_mask, kept_span

    cfg = LongVUConfig.from_dict(json.loads(json.dumps(_release_like())))
    assert kept_span((144, 256), 12) == ("cols", 3, 9) and kept_span((256, 144), 12) == ("rows", 3, 9)
    mask = cell_mask((144, 256), cfg)
    assert mask.shape == (144, 8) and bool(mask.all(dim=1).sum() == 144 - 2 * 12 * 1)
    assert bool(np.all(cell_mask((96, 96), cfg).numpy()))


def _release_like() -> dict:
    from slowfast_trt.fixtures.tiny_longvu import TinyLongVUSpec, tiny_longvu_config

    return tiny_longvu_config(TinyLongVUSpec(), vocab_size=464, bos_token_id=446, eos_token_id=448)
