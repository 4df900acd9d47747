"""LongVU in the tools: the compute/memory budget (release sizes), the Jetson planner and the
benchmark dispatching on the family."""

from __future__ import annotations

import json

import pytest

from longvu_helpers import write_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("longvu_tools"))


def test_release_budget_dino_dominates_long_videos():
    from slowfast_trt.models.longvu.config import LongVUConfig, TowerConfig
    from slowfast_trt.tools.longvu_budget import (
        QWEN2_TOKENIZER_LEN, RELEASE, RELEASE_DINO, RELEASE_SIGLIP, compute_rows, memory_rows, sizes_of,
    )

    sizes = sizes_of(LongVUConfig.from_dict(RELEASE), TowerConfig.from_dict(RELEASE_SIGLIP, "siglip", "r"),
                     TowerConfig.from_dict(RELEASE_DINO, "dinov2", "r"), QWEN2_TOKENIZER_LEN)
    assert 1.12e9 < sizes.dino < 1.14e9 and 0.40e9 < sizes.siglip < 0.42e9  # dinov2-giant, so400m (no head)
    assert 1.7e12 < sizes.dino_flop_frame < 1.9e12 and 2.5 < sizes.dino_flop_frame / sizes.siglip_flop_frame < 2.8
    rows = {r["minutes"]: r for r in compute_rows(sizes, [0.5, 2, 60])}
    assert rows[60]["dino_share"] > 0.9 and rows[2]["dino_share"] > 0.5 > rows[0.5]["dino_share"]
    assert rows[60]["siglip_tflop"] == pytest.approx(rows[2]["siglip_tflop"] * 400 / 120)  # at most 400 kept
    memory = {(r["device"], r["precision"]): r for r in memory_rows(sizes, 9216, 8, 10)}
    assert memory[("AGX Orin 32GB", "fp16")]["fits"] and not memory[("Orin NX 16GB", "fp16")]["fits"]
    assert memory[("Orin NX 16GB", "int4-awq")]["fits"] and not memory[("Orin Nano 8GB", "int4-awq")]["fits"]


def test_jetson_planner_knows_longvu(folders, capsys, tmp_path):
    from slowfast_trt.tools.jetson_memory import main

    out = tmp_path / "plan.json"
    assert main(["--ckpt", str(folders["checkpoint"]), "--siglip", str(folders["siglip"]), "--dino",
                 str(folders["dino"]), "--json", str(out)]) == 0
    assert "DINOv2" in capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["sizes"]["visual_budget"] == 1024 - 26 - 16 and len(plan["memory"]) == 8


def test_bench_hands_longvu_to_its_stages(folders, tmp_path, capsys):
    from slowfast_trt.tools.bench import main

    out = tmp_path / "bench.json"
    status = main(["--ckpt", str(folders["checkpoint"]), "--siglip", str(folders["siglip"]), "--dino",
                   str(folders["dino"]), "--frames", "3", "--new-tokens", "2", "--runs", "1", "--warmup", "0",
                   "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    row = json.loads(out.read_text())["rows"][0]
    assert row["frames"] == 3 and row["kept"] == 3 and row["mode"] == "high" and row["visual_tokens"] == 3 * 156
    assert row["dino_ms"] > 0 and row["siglip_ms"] > 0 and 0 < row["dino_share"] < 1
    assert row["followup_reused_rows"] > row["visual_tokens"]  # all high-res under budget: the video rows are kept
