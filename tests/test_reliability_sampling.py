"""Issue 11, sampling parameters: every bad value is a ValueError naming the field; extreme but
valid values sample without crashing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slowfast_trt.sampling import SamplingParams, TokenSampler

NAN, INF = float("nan"), float("inf")

BAD = [
    ("temperature", NAN), ("temperature", INF), ("temperature", -1.0), ("temperature", "0.5"), ("temperature", True),
    ("repetition_penalty", NAN), ("repetition_penalty", INF), ("repetition_penalty", 0.0),
    ("top_p", NAN), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 2.5), ("top_k", "3"),
    ("max_new_tokens", 0), ("max_new_tokens", True), ("max_new_tokens", 2.0),
    ("stop_strings", ("",)), ("stop_strings", (3,)), ("stop_strings", "x"),
    ("stop_token_ids", (-1,)), ("stop_token_ids", ("a",)), ("stop_token_ids", [1]),
    ("seed", "x"), ("seed", 1.5), ("seed", 2**64), ("seed", -(2**63) - 1),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_empty_stop_string_is_refused_not_a_one_token_answer():
    with pytest.raises(ValueError, match="non-empty"):
        SamplingParams(stop_strings=("",))


@pytest.mark.parametrize("seed", [0, -(2**63), 2**64 - 1, np.int64(7), None])
def test_seeds_in_range_work(seed):
    TokenSampler(SamplingParams(seed=seed, temperature=1.0))(torch.randn(50), [])


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-39])
def test_tiny_temperature_is_greedy_in_the_limit(temperature):
    logits = torch.randn(200, generator=torch.Generator().manual_seed(1))
    for top in (dict(), dict(top_k=5, top_p=0.5)):
        token = TokenSampler(SamplingParams(temperature=temperature, seed=3, **top))(logits, [])
        assert token == int(logits.argmax())


def test_extreme_values_sample_a_token():
    logits = torch.randn(200, generator=torch.Generator().manual_seed(2))
    for params in (dict(temperature=1e300), dict(temperature=0.7, repetition_penalty=1e-300),
                   dict(temperature=0.7, repetition_penalty=1e300), dict(temperature=1.0, top_k=10**9)):
        token = TokenSampler(SamplingParams(seed=0, **params))(logits, [1, 2, 3])
        assert 0 <= token < 200
