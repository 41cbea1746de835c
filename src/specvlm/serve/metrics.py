"""`GET /metrics`: Prometheus' text exposition format, written by hand (a few counters, two gauges, three
histograms; no client library needed). Updated from the worker thread and the handlers, hence the lock."""

from __future__ import annotations

import threading
import time
from collections import Counter

TAU_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts)]
        return out + [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.sum:.6f}",
            f"{name}_count {self.count}",
        ]


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.cancels: Counter = Counter()
        self.prompt_tokens = self.generation_tokens = 0
        self.tau = Histogram(TAU_BUCKETS)
        self.latency = Histogram(SECONDS_BUCKETS)
        self.first_token = Histogram(SECONDS_BUCKETS)

    def request(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1

    def cancelled(self, reason: str, tokens: int = 0) -> None:
        with self._lock:
            self.cancels[reason] += 1
            self.generation_tokens += tokens

    def generated(self, job, usage: dict, stats: dict) -> None:
        now = time.monotonic()
        with self._lock:
            self.prompt_tokens += usage["prompt_tokens"]
            self.generation_tokens += usage["completion_tokens"]
            if stats.get("tau") is not None:
                self.tau.observe(stats["tau"])
            self.latency.observe(now - job.arrived)
            if job.first_token is not None:
                self.first_token.observe(job.first_token - job.arrived)

    def render(self, queue_length: int, running: int) -> str:
        with self._lock:
            families = [  # (name after "specvlm_", type, help, value: a number, {label value: number}, a Histogram)
                ("requests_total", "counter", "chat completion requests by HTTP status", ("status", self.statuses)),
                (
                    "requests_cancelled_total",
                    "counter",
                    "requests stopped early: client disconnect, timeout, shutdown",
                    ("reason", self.cancels),
                ),
                ("prompt_tokens_total", "counter", "prompt tokens of generated requests", self.prompt_tokens),
                (
                    "generation_tokens_total",
                    "counter",
                    "tokens generated (cancelled requests too)",
                    self.generation_tokens,
                ),
                ("queue_length", "gauge", "requests waiting for the model worker", queue_length),
                ("running_requests", "gauge", "requests decoding in the running batch", running),
                ("tau", "histogram", "draft tokens accepted per verification round, per request", self.tau),
                ("request_latency_seconds", "histogram", "arrival to last token, completed requests", self.latency),
                ("time_to_first_token_seconds", "histogram", "arrival to first generated token", self.first_token),
            ]
            lines = []
            for short, kind, help, value in families:
                name = "specvlm_" + short
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                if isinstance(value, Histogram):
                    lines += value.lines(name)
                elif isinstance(value, tuple):
                    label, counts = value
                    lines += [f'{name}{{{label}="{key}"}} {n}' for key, n in sorted(counts.items())]
                else:
                    lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"
