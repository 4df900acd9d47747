"""LongVU ONNX export: each graph in ONNX Runtime against the PyTorch module, and the goldens
(kept frames, visual tokens, logits, greedy tokens) with every stage run by ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from longvu_helpers import SLOW_CASES, case_frames, case_names, check_logits, golden, teacher_forced_logits, write_folders

GOLDEN = golden()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from slowfast_trt.cli.export import main
    from slowfast_trt.models.longvu.reference import LongVUReference

    root = tmp_path_factory.mktemp("longvu_export")
    folders = write_folders(root)
    # The export CLI hands a LongVU checkpoint to the LongVU pipeline (model_type cambrian_qwen).
    status = main(["--ckpt", str(folders["checkpoint"]), "--out", str(root / "export"), "--backend", "onnxruntime",
                   "--precision", "fp32", "--max-seq-len", "1536", "--siglip", str(folders["siglip"]),
                   "--dino", str(folders["dino"])])
    assert status == 0
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    ref = LongVUReference.load(folders["checkpoint"], siglip=folders["siglip"], dino=folders["dino"])
    return root / "export", manifest, ref


class _Ort:
    """The exported graphs as :class:`Stages` and a decoder over a concatenated KV cache."""

    def __init__(self, folder, layers: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sessions = {n: ort.InferenceSession(str(folder / f"{n}.onnx"), options)
                         for n in ("dino", "siglip", "connector", "decoder")}
        self.table = np.load(folder / "embed_tokens.npy")
        self.layers = layers

    def run(self, name, feeds):
        return self.sessions[name].run(None, feeds)

    def stages(self, newline):
        from slowfast_trt.models.longvu.connector import cell_bias
        from slowfast_trt.models.longvu.pipeline import Stages

        def connector(siglip, dino, mask):
            high, low = self.run("connector", {"siglip_features": siglip.numpy(), "dino_features": dino.numpy(),
                                               "cell_bias": cell_bias(mask).numpy()})
            return torch.from_numpy(high), torch.from_numpy(low)

        return Stages(
            dino=lambda px: torch.from_numpy(self.run("dino", {"frames": px})[0]),
            siglip=lambda px: torch.from_numpy(self.run("siglip", {"frames": px})[0]),
            connector=connector,
            embed=self.embed,
            newline=newline,
        )

    def embed(self, ids):
        return torch.from_numpy(self.table[list(ids)])

    def forward_rows(self, embeds, start=0, cache=None, all_logits=False):
        """The graph gives the last row's logits; ``all_logits`` runs the rows one at a time."""
        if cache is None:
            shape = (1, 0) + self.kv_shape
            cache = [np.zeros(shape, np.float32) for _ in range(2 * self.layers)]
        rows = [embeds[i:i + 1] for i in range(embeds.shape[0])] if all_logits else [embeds]
        logits_all = []
        for chunk in rows:
            length = chunk.shape[0]
            feeds = {"inputs_embeds": chunk[None].numpy(), "position_ids": np.arange(start, start + length)[None],
                     "past_length": np.array([start])}
            for i in range(self.layers):
                feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = cache[2 * i], cache[2 * i + 1]
            out = self.run("decoder", feeds)
            logits_all.append(torch.from_numpy(out[0]))
            cache = [np.concatenate((old, new), axis=1) for old, new in zip(cache, out[1:])]
            start += length
        logits = torch.cat(logits_all) if all_logits else logits_all[0][0]
        return logits, cache


@pytest.fixture(scope="module")
def engines(exported):
    folder, manifest, ref = exported
    text = ref.model.config.text
    runner = _Ort(folder, text.num_layers)
    runner.kv_shape = (text.num_kv_heads, text.head_dim)
    return runner


def test_manifest_names_the_family_and_the_graphs(exported):
    folder, manifest, _ = exported
    assert manifest["family"] == "longvu" and manifest["custom_op"] is None and manifest["frames"] is None
    assert sorted(manifest["subgraphs"]) == ["connector", "decoder", "dino", "embed", "siglip"]
    assert json.loads((folder / "manifest.json").read_text())["max_seq_len"] == 1536
    decoder = manifest["subgraphs"]["decoder"]
    assert [t["name"] for t in decoder["inputs"][:3]] == ["inputs_embeds", "position_ids", "past_length"]


def test_each_graph_matches_its_module(exported, engines):
    from slowfast_trt.models.longvu.connector import cell_bias
    from slowfast_trt.models.longvu.tokens import cell_mask

    _, _, ref = exported
    model, rng = ref.model, np.random.RandomState(0)
    worst = {}
    with torch.no_grad():
        for name, size in (("dino", 378), ("siglip", 384)):
            px = rng.randint(0, 256, (3, size, size, 3)).astype(np.uint8)
            want = (model.dino_features if name == "dino" else model.siglip_features)(torch.from_numpy(px))
            got = torch.from_numpy(engines.run(name, {"frames": px})[0])
            worst[name] = float((got - want).abs().max() / want.abs().max())
        siglip, dino = torch.randn(5, 576, 48), torch.randn(5, 576, 40)
        bias = cell_bias(cell_mask((144, 256), model.config))  # a landscape frame: masked cells
        want_high, want_low = model.connector(siglip, dino, bias)
        high, low = engines.run("connector", {"siglip_features": siglip.numpy(), "dino_features": dino.numpy(),
                                              "cell_bias": bias.numpy()})
        worst["connector"] = max(float((torch.from_numpy(high) - want_high).abs().max()),
                                 float((torch.from_numpy(low) - want_low).abs().max()))
        embeds = torch.randn(7, model.config.text.hidden_size)
        want, _ = ref.forward_rows(embeds)
        got, _ = engines.forward_rows(embeds)
        worst["decoder"] = float((got - want).abs().max())
    assert all(v < 1e-4 for v in worst.values()), worst


ORT_CASES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in case_names()]


@pytest.mark.parametrize("name", ORT_CASES)
def test_ort_reproduces_upstream(exported, engines, name):
    """Every stage in ONNX Runtime, the host decisions of the model package: upstream's tokens."""
    from slowfast_trt.generation import DecodeOutcome, decode_loop
    from slowfast_trt.models.longvu.pipeline import LongVUEncoder
    from slowfast_trt.sampling import SamplingParams

    _, _, ref = exported
    case = GOLDEN["cases"][name]
    encoder = LongVUEncoder(ref.model.config, engines.stages(ref.model.connector.image_newline.detach()))
    video = encoder.encode_video(case_frames(case))
    rows = encoder.prompt_rows(video, ref.prompt_ids(case["question"]))
    assert rows.kept == case["kept_frame_indices"]
    assert rows.visual_tokens == case["visual_tokens"] and rows.length == case["seq_len"]
    norms = rows.embeds.double().norm(dim=-1)
    assert torch.allclose(norms, torch.tensor(case["inputs_embeds"]["row_norms"], dtype=torch.float64), rtol=1e-4)
    ids = case["generated_ids"]
    last, cache = engines.forward_rows(rows.embeds)
    state = {"cache": cache, "length": rows.length}

    def step(token):
        logits, state["cache"] = engines.forward_rows(engines.embed([token]), state["length"], state["cache"])
        state["length"] += 1
        return logits

    outcome = DecodeOutcome()
    for _ in decode_loop(last, step, SamplingParams(max_new_tokens=len(ids)), set(ref.stop_ids), ref.tokenizer,
                         {}, outcome):
        pass
    assert outcome.ids == ids
    if name in ("mix", "wide", "lowdrop"):  # logits row by row: a few cases are enough
        prefill, steps = teacher_forced_logits(engines.forward_rows, engines.embed, rows.embeds, ids)
        check_logits(case, prefill, [s.reshape(-1) for s in steps], atol=2e-3)


@pytest.mark.slow
def test_int4_awq_decoder(exported, tmp_path):
    """``--precision int4-awq``: the shared AWQ + INT4 rewrite on LongVU's plain Qwen2 decoder."""
    from slowfast_trt.cli.export import main
    from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

    _, manifest, ref = exported
    folders = ref.model.folders
    assert main(["--ckpt", str(folders.checkpoint), "--out", str(tmp_path / "int4"), "--backend", "onnxruntime",
                 "--precision", "int4-awq", "--siglip", str(folders.siglip), "--dino", str(folders.dino)]) == 0
    report = json.loads((tmp_path / "int4" / "quantization.json").read_text())
    assert report["awq"]["method"] == "awq" and len(report["quantized"]) == 7 * ref.model.config.text.num_layers
    case = GOLDEN["cases"]["wide"]
    with SlowFastRuntime.load(tmp_path / "int4", threads=1) as rt:
        result = rt.generate(case_frames(case), case["question"], max_new_tokens=4)
    assert result.kept_frames == case["kept_frame_indices"] and result.fast_tokens == case["visual_tokens"]
    assert result.token_ids == case["generated_ids"][:4]
