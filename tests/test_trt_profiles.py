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
    profile_for_step,
)


class Recorder(Engine):
    """Stands for one execution context: records the row counts it ran."""

    def __init__(self, profile: int):
        self.name, self.device, self.profile = "decoder", torch.device("cpu"), profile
        self.calls: list[int] = []
        self.closed = False

    @property
    def inputs(self):
        return (TensorInfo("inputs_embeds", "float32", (1, "seq", 8)), TensorInfo("position_ids", "int64", (1, "seq")),
                TensorInfo("past_key_0", "float32", (1, "past", 2, 4)))

    @property
    def outputs(self):
        return (TensorInfo("logits", "float32", (1, 32)),)

    def run(self, feeds, outputs=None):
        self.calls.append(int(feeds["inputs_embeds"].shape[1]))
        return {"logits": torch.full((1, 32), float(self.profile))}

    def close(self):
        self.closed = True


FULL = 64  # the KV cache length: the decode profile's fixed past


def _feeds(rows: int, past: int = 0) -> dict:
    return {"inputs_embeds": torch.zeros(1, rows, 8), "position_ids": torch.zeros(1, rows, dtype=torch.int64),
            "past_key_0": torch.zeros(1, past, 2, 4)}


def test_profile_for_step():
    assert (PREFILL_PROFILE, DECODE_PROFILE) == (0, 1)  # the order trt_plan.decoder_profiles builds them in
    assert profile_for_step(2, 1, FULL, FULL) == DECODE_PROFILE  # static step: one row over the whole cache
    for rows, past in ((1, 10), (1, FULL - 1), (0, FULL), (2, FULL), (300, 0)):
        assert profile_for_step(2, rows, past, FULL) == PREFILL_PROFILE, (rows, past)
    assert profile_for_step(1, 1, FULL, FULL) == PREFILL_PROFILE  # one profile (vision, slow_kv): profile 0 only


def test_check_profile():
    assert check_profile("decoder", 1, 2) == 1
    for bad in (2, -1, True, 1.0, "1"):
        with pytest.raises(EngineError, match=r"decoder: profile must be an integer in \[0, 1\]"):
            check_profile("decoder", bad, 2)


def test_router_sends_static_steps_to_the_decode_context():
    prefill, decode = Recorder(0), Recorder(1)
    router = ProfileRouter((prefill, decode), full_cache=FULL)
    assert router.input_names == ("inputs_embeds", "position_ids", "past_key_0") and router.output_names == ("logits",)
    assert router.run(_feeds(40))["logits"][0, 0] == 0  # prompt prefill
    for _ in range(3):
        assert router.run(_feeds(1, FULL))["logits"][0, 0] == 1  # static decode steps (whole cache)
    assert router.run(_feeds(1, 45))["logits"][0, 0] == 0  # a dynamic step (valid prefix): prefill profile
    router.run(_feeds(5, 46))  # a follow-up question's prefill
    assert prefill.calls == [40, 1, 5] and decode.calls == [1, 1, 1]
    router.close()
    assert prefill.closed and decode.closed


def test_router_with_one_context_and_bad_setup():
    only = Recorder(0)
    router = ProfileRouter((only,), full_cache=FULL)
    router.run(_feeds(1, FULL))
    router.run(_feeds(9))
    assert only.calls == [1, 9]
    with pytest.raises(EngineError, match="missing input inputs_embeds"):
        router.run({"position_ids": torch.zeros(1, 1, dtype=torch.int64)})
    with pytest.raises(EngineError, match="missing input past_key_0"):
        router.run({"inputs_embeds": torch.zeros(1, 1, 8)})
    with pytest.raises(EngineError, match="at least one context"):
        ProfileRouter((), full_cache=FULL)

    class NoPast(Recorder):
        @property
        def inputs(self):
            return super().inputs[:2]

    with pytest.raises(EngineError, match="no input past_key_0"):
        ProfileRouter((NoPast(0),), full_cache=FULL)


def test_captured_steps_get_a_dedicated_decode_context():
    class Forking(Recorder):
        def for_capture(self):
            fork = Forking(self.profile)
            fork.parent = self
            return fork

    prefill, decode = Forking(0), Forking(1)
    captured = ProfileRouter((prefill, decode), full_cache=FULL).for_capture()
    assert captured.parent is decode and captured is not decode  # the decode profile, its own state
    assert ProfileRouter((Recorder(0),), full_cache=FULL).for_capture().profile == 0  # stateless: itself
