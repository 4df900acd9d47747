"""Which decoder context runs which call (the plain half of the TensorRT decode profile):
profile choice, profile index checks and the router, driven by small recording engines.
No TensorRT here; ``TrtEngine.context_on`` itself needs a GPU and TensorRT."""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.runtime.engine import (
    DECODE_PROFILE,
    PREFILL_PROFILE,
    Engine,
    EngineError,
    ProfileRouter,
    TensorInfo,
    check_profile,
    profile_for_rows,
)


class Recorder(Engine):
    """Stands for one execution context: records the row counts it ran."""

    def __init__(self, profile: int):
        self.name, self.device, self.profile = "decoder", torch.device("cpu"), profile
        self.calls: list[int] = []
        self.closed = False

    @property
    def inputs(self):
        return (TensorInfo("inputs_embeds", "float32", (1, "seq", 8)), TensorInfo("position_ids", "int64", (1, "seq")))

    @property
    def outputs(self):
        return (TensorInfo("logits", "float32", (1, 32)),)

    def run(self, feeds, outputs=None):
        self.calls.append(int(feeds["inputs_embeds"].shape[1]))
        return {"logits": torch.full((1, 32), float(self.profile))}

    def close(self):
        self.closed = True


def _feeds(rows: int) -> dict:
    return {"inputs_embeds": torch.zeros(1, rows, 8), "position_ids": torch.zeros(1, rows, dtype=torch.int64)}


def test_profile_for_rows():
    assert (PREFILL_PROFILE, DECODE_PROFILE) == (0, 1)  # the order trt_plan.decoder_profiles builds them in
    assert profile_for_rows(2, 1) == DECODE_PROFILE
    for rows in (0, 2, 300):
        assert profile_for_rows(2, rows) == PREFILL_PROFILE
    assert profile_for_rows(1, 1) == PREFILL_PROFILE  # one profile (vision, slow_kv, old engines): profile 0 only


def test_check_profile():
    assert check_profile("decoder", 1, 2) == 1
    for bad in (2, -1, True, 1.0, "1"):
        with pytest.raises(EngineError, match=r"decoder: profile must be an integer in \[0, 1\]"):
            check_profile("decoder", bad, 2)


def test_router_sends_one_row_steps_to_the_decode_context():
    prefill, decode = Recorder(0), Recorder(1)
    router = ProfileRouter((prefill, decode))
    assert router.input_names == ("inputs_embeds", "position_ids") and router.output_names == ("logits",)
    assert router.run(_feeds(40))["logits"][0, 0] == 0  # prompt prefill
    for _ in range(3):
        assert router.run(_feeds(1))["logits"][0, 0] == 1  # decode steps
    router.run(_feeds(5))  # a follow-up question's prefill
    assert prefill.calls == [40, 5] and decode.calls == [1, 1, 1]
    router.close()
    assert prefill.closed and decode.closed


def test_router_with_one_context_and_bad_setup():
    only = Recorder(0)
    router = ProfileRouter((only,))
    router.run(_feeds(1))
    router.run(_feeds(9))
    assert only.calls == [1, 9]
    with pytest.raises(EngineError, match="missing input inputs_embeds"):
        router.run({"position_ids": torch.zeros(1, 1, dtype=torch.int64)})
    with pytest.raises(EngineError, match="at least one context"):
        ProfileRouter(())
    with pytest.raises(EngineError, match="no input hidden"):
        ProfileRouter((only,), rows_input="hidden")
