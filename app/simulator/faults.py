"""Per-request fate: which fault fires and how long to wait, drawn from the seeded RNG.

Kept pure (config + RNG in, plan out) so a seed's sequence of plans is easy to reproduce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.simulator.config import SimulatorConfig

ERROR_STATUSES = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class Plan:
    latency_ms: float
    drop: bool = False
    hang: bool = False
    error_status: int | None = None
    malformed: bool = False
    slow: bool = False


def plan_request(cfg: SimulatorConfig, rng: random.Random, output_tokens: int) -> Plan:
    """Draw faults in a fixed order, then the latency; a rate of 0 consumes no draw."""
    drop = cfg.drop_rate > 0 and rng.random() < cfg.drop_rate
    hang = cfg.hang_rate > 0 and rng.random() < cfg.hang_rate
    error = cfg.error_rate > 0 and rng.random() < cfg.error_rate
    malformed = cfg.malformed_rate > 0 and rng.random() < cfg.malformed_rate
    slow = cfg.slow_rate > 0 and rng.random() < cfg.slow_rate
    error_status = rng.choice(ERROR_STATUSES) if error else None

    if cfg.latency_uniform_ms is not None:
        latency_ms = rng.uniform(*cfg.latency_uniform_ms)
    else:
        latency_ms = cfg.latency_base_ms + cfg.latency_per_token_ms * output_tokens
        if cfg.latency_jitter_ms > 0:
            jitter = cfg.latency_jitter_ms
            latency_ms = max(0.0, latency_ms + rng.uniform(-jitter, jitter))
    if slow:
        latency_ms += cfg.slow_ms
    return Plan(latency_ms, drop, hang, error_status, malformed, slow)
