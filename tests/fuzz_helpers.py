"""What the fuzz tests share: bounded deterministic settings, a "mostly valid" strategy and a call
run in a thread with a timeout (a hang fails the test instead of stalling the run)."""

from __future__ import annotations

import threading

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CALL_TIMEOUT_S = 120


def fuzz_settings(max_examples: int):
    """Deterministic (``derandomize``): CI runs the same examples every time."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def mostly(valid, invalid):
    """``valid`` three times in four: the fuzz should reach generation, not only the checks."""
    return st.sampled_from((True, True, True, False)).flatmap(lambda ok: valid if ok else invalid)


def bounded(call, what: str = "the call"):
    """Run ``call`` in a thread: (returned, raised); a call still running after the timeout fails."""
    box = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # judged by the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(CALL_TIMEOUT_S)
    assert not thread.is_alive(), f"hung: {what}"
    return box.get("value"), box.get("error")
