"""Prometheus text metrics, written by hand (no client library): counters, gauges, histograms.

Exposed at ``GET /metrics`` in the text format 0.0.4. Names follow Prometheus conventions
(``_total`` counters, base units: seconds, bytes).
"""

from __future__ import annotations

import threading
from typing import Callable

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v)}"'.replace("\n", " ") for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class _Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    """The server's metrics; thread-safe (the model worker and the event loop both write)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple], float] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._hist: dict[str, _Histogram] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        for name, text in (
            ("slowfast_requests_total", "HTTP requests by route and status"),
            ("slowfast_errors_total", "Requests answered with an error, by status"),
            ("slowfast_generations_total", "Generations finished, by finish reason"),
            ("slowfast_prompt_tokens_total", "Prompt tokens of finished generations"),
            ("slowfast_cached_prompt_tokens_total", "Prompt tokens taken from a cached conversation"),
            ("slowfast_completion_tokens_total", "Generated tokens (cancelled generations included)"),
            ("slowfast_cancelled_total", "Generations stopped early, by why (disconnect, timeout)"),
            ("slowfast_video_cache_hits_total", "Requests whose encoded video came from the cache"),
            ("slowfast_video_cache_misses_total", "Requests that decoded and encoded their video"),
            ("slowfast_video_encodes_total", "Videos decoded and run through vision, pooler and slow K/V"),
            ("slowfast_vision_seconds_total", "Seconds spent decoding and encoding videos"),
            ("slowfast_session_cache_hits_total", "Follow-ups that continued a cached conversation"),
            ("slowfast_session_cache_misses_total", "Requests that started a conversation from scratch"),
            ("slowfast_rejected_total", "Requests refused because the queue was full"),
        ):
            self._help[name] = ("counter", text)
        for name, text, buckets in (
            ("slowfast_time_to_first_token_seconds", "From request queued to first token", _TTFT_BUCKETS),
            ("slowfast_request_seconds", "From request queued to last token", _LATENCY_BUCKETS),
            ("slowfast_decode_tokens_per_second", "Decode speed of each generation", _TPS_BUCKETS),
        ):
            self._help[name] = ("histogram", text)
            self._hist[name] = _Histogram(buckets)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self._hist[name].observe(value)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register a gauge read at scrape time."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        """The text exposition format."""
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            hists = {k: (h.buckets, list(h.counts), h.total, h.count) for k, h in self._hist.items()}
        for name, (kind, text) in sorted(self._help.items()):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                series = [(dict(k[1]), v) for k, v in counters.items() if k[0] == name] or [({}, 0.0)]
                lines += [f"{name}{_labels(lab)} {_num(v)}" for lab, v in sorted(series, key=lambda s: sorted(s[0].items()))]
            elif kind == "gauge":
                lines.append(f"{name} {_num(float(self._gauges[name]()))}")
            else:
                buckets, counts, total, count = hists[name]
                lines += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(buckets, counts)]
                lines += [f'{name}_bucket{{le="+Inf"}} {count}', f"{name}_sum {_num(total)}", f"{name}_count {count}"]
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def parse_metrics(text: str) -> dict[str, float]:
    """``{"name{labels}": value}`` of a text exposition (for tests and tools)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
