"""Mutable run-time state of one simulator: live config, seeded RNG, counters and request log.

Everything here is touched from the event loop only, so plain attributes need no locks.
"""

from __future__ import annotations

import math
import random
from collections import deque
from itertools import islice
from typing import Any

from app.simulator.config import SimulatorConfig
from app.simulator.slots import SlotQueue

# p50/p95 come from the most recent samples only, so memory stays bounded on long benchmarks;
# count, mean and max cover every answered request since the last reset.
LATENCY_SAMPLE_WINDOW = 50_000
RPM_WINDOW_S = 60.0


class SimState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.closing = False
        self.in_flight = 0
        # The llamacpp and vllm profiles: requests past the slots wait here.
        self.slots = SlotQueue()
        self.rpm_window: deque[float] = deque()
        self.log: deque[dict[str, Any]] = deque(maxlen=config.request_log_size)
        self.reset()

    def reset(self) -> None:
        """Clear counters and the log; in-flight requests keep running and keep being counted."""
        self.seq = 0
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.rate_limited = 0
        self.peak_in_flight = self.in_flight
        self.dropped = 0
        self.hung = 0
        self.malformed = 0
        self.latency_count = 0
        self.latency_sum = 0.0
        self.latency_max = 0.0
        self.latency_samples: deque[float] = deque(maxlen=LATENCY_SAMPLE_WINDOW)
        # System prompts answered before: their tokens are "cached" in a later request, as
        # a provider's prompt cache serves a repeated prefix.
        self.seen_system_prompts: set[str] = set()
        self.log.clear()
        self.rpm_window.clear()

    def apply_config(self, config: SimulatorConfig) -> None:
        old = self.config
        self.config = config
        if config.seed != old.seed:
            self.rng = random.Random(config.seed)
        if config.request_log_size != old.request_log_size:
            self.log = deque(self.log, maxlen=config.request_log_size)

    def record_answer(self, status: int, latency_ms: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latency_count += 1
        self.latency_sum += latency_ms
        self.latency_samples.append(latency_ms)
        if latency_ms > self.latency_max:
            self.latency_max = latency_ms

    def stats(self) -> dict[str, Any]:
        samples = sorted(self.latency_samples)
        count = self.latency_count
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "in_flight": self.in_flight,
            "queued": self.slots.queued,
            "peak_in_flight": self.peak_in_flight,
            "dropped": self.dropped,
            "hung": self.hung,
            "malformed": self.malformed,
            "latencies_ms": {
                "count": count,
                "mean": round(self.latency_sum / count, 3) if count else 0.0,
                "p50": round(_percentile(samples, 0.50), 3),
                "p95": round(_percentile(samples, 0.95), 3),
                "max": round(self.latency_max, 3),
            },
        }

    def log_page(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Entries with ``seq > after``; the log holds consecutive seqs, so slice by offset."""
        if not self.log or limit <= 0:
            return []
        first = self.log[0]["seq"]
        start = max(0, after - first + 1)
        return list(islice(self.log, start, start + limit))


def _percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 when there are no samples."""
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return sorted_samples[rank - 1]
