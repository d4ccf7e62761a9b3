"""The limits every upstream call passes, in order: the model's adaptive concurrency limit
(fair between jobs), its declared rpm/tpm buckets, the global limit (fair between jobs),
and the upstream's connection pool. Built lazily per model, shared by all jobs; shared
with every other process too when SWARM_REDIS_URL names a Redis (app/scheduler/shared_limits)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.config import Role, Settings
from app.engine.chunking import count_tokens
from app.errors import StartupRefused
from app.scheduler.limits import AdaptiveLimiter, FairLimiter, RateLimits
from app.scheduler.shared_limits import (
    SharedAdaptiveLimiter,
    SharedFairLimiter,
    SharedLimits,
    SharedRateLimits,
)
from app.store.model_limits import LearnedLimit
from app.upstream.registry import ModelInfo

log = logging.getLogger(__name__)

# Output tokens assumed for the tpm estimate of a call that sets no max_tokens.
DEFAULT_OUTPUT_ESTIMATE = 1024


# A model's gate unused this long (nothing in flight or waiting) is dropped, its learned
# limit kept: model names come from requests, so gates must not pile up forever.
GATE_IDLE_S = 600.0
# At most this many learned limits are kept in memory for models without a gate.
MAX_LEARNED = 1_000


@dataclass
class ModelGate:
    concurrency: AdaptiveLimiter
    rate: RateLimits | None
    last_used: float = 0.0


class LimitsConfigError(StartupRefused):
    """The settings would let several processes multiply the limits."""


def limits_divisor(settings: Settings) -> int:
    """By how much this process divides every limit: 1 with Redis (the limits are shared)
    or as the single process; SWARM_WORKER_COUNT for a `worker` without Redis. A `worker`
    with neither is refused: N of them would each take the whole limit."""
    if settings.redis_url is not None or settings.role is not Role.worker:
        return 1
    if settings.worker_count is None:
        raise LimitsConfigError(
            "SWARM_ROLE=worker without SWARM_REDIS_URL: several workers would each take "
            "every limit in full; set SWARM_REDIS_URL to share the limits, or "
            "SWARM_WORKER_COUNT=N to give each worker 1/N of them"
        )
    return settings.worker_count


def shared_limits(settings: Settings, group: str) -> SharedLimits | None:
    """The link to the shared limits when SWARM_REDIS_URL is set."""
    if settings.redis_url is None:
        return None
    return SharedLimits(
        settings.redis_url.get_secret_value(),
        prefix=settings.redis_key_prefix,
        lease_s=settings.limit_lease_s,
        group=group,
        fallback_workers=settings.worker_count or 1,
    )


class Gates:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        *,
        shared: SharedLimits | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.divisor = limits_divisor(settings)
        self.shared = shared if shared is not None else shared_limits(settings, "workers")
        if self.shared is not None:
            self.global_slots: FairLimiter = SharedFairLimiter(
                self.shared, "global", settings.global_concurrency
            )
            log.info("limits are shared over Redis with the other processes")
        else:
            self.global_slots = FairLimiter(max(1, settings.global_concurrency // self.divisor))
            if self.divisor > 1:
                log.info(
                    "no Redis: this worker takes 1/%d of every limit (SWARM_WORKER_COUNT=%d)",
                    self.divisor,
                    self.divisor,
                )
        self.models: dict[str, ModelGate] = {}
        # Limits a previous run of the service learned, by model: a model's gate starts
        # from its learned limit (and past slow start, once the upstream pushed back).
        self.learned: dict[str, LearnedLimit] = {}

    def for_model(self, info: ModelInfo) -> ModelGate:
        gate = self.models.get(info.name)
        if gate is None:
            ceiling = info.max_concurrency or self.settings.model_concurrency_max
            ceiling = max(1, ceiling // self.divisor)
            initial: float = min(self.settings.model_concurrency_initial, ceiling)
            slow_start = True
            learned = self.learned.get(info.name)
            if learned is not None:
                initial = min(max(1.0, learned.limit), ceiling)
                slow_start = learned.slow_start
            gate = ModelGate(
                concurrency=self._adaptive(info.name, initial, ceiling, slow_start),
                rate=self._rates(info) if info.rpm or info.tpm else None,
            )
            self.models[info.name] = gate
        gate.last_used = self._clock()
        return gate

    def _adaptive(
        self, name: str, initial: float, ceiling: int, slow_start: bool
    ) -> AdaptiveLimiter:
        decrease = self.settings.adaptive_decrease
        if self.shared is not None:
            return SharedAdaptiveLimiter(
                self.shared,
                name,
                initial=initial,
                maximum=ceiling,
                decrease=decrease,
                slow_start=slow_start,
                delay=self.settings.delay_limit,
            )
        return AdaptiveLimiter(
            initial=initial,
            maximum=ceiling,
            decrease=decrease,
            slow_start=slow_start,
            delay=self.settings.delay_limit,
        )

    def _rates(self, info: ModelInfo) -> RateLimits:
        if self.shared is not None:
            return SharedRateLimits(self.shared, info.name, info.rpm, info.tpm)
        d = self.divisor
        return RateLimits(
            None if info.rpm is None else max(1, info.rpm // d),
            None if info.tpm is None else max(1, info.tpm // d),
        )

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def evict_idle(self, idle_s: float = GATE_IDLE_S) -> list[str]:
        """Drop the gates of models unused for `idle_s` with nothing in flight or waiting,
        remembering their learned limits (a model with declared rpm/tpm keeps its gate:
        its buckets must not refill by being forgotten). Returns the models dropped."""
        now = self._clock()
        dropped = []
        for name, gate in list(self.models.items()):
            limiter = gate.concurrency
            if (
                gate.rate is None
                and now - gate.last_used >= idle_s
                and limiter.in_flight == 0
                and limiter.waiting == 0
            ):
                self.learned[name] = _learned(gate)
                del self.models[name]
                dropped.append(name)
        while len(self.learned) > MAX_LEARNED:
            del self.learned[next(iter(self.learned))]
        return dropped

    def learned_limits(self) -> dict[str, LearnedLimit]:
        """What each model's limiter has learned, for the next start of the service."""
        return {name: _learned(gate) for name, gate in self.models.items()}


def _learned(gate: ModelGate) -> LearnedLimit:
    return LearnedLimit(gate.concurrency.limit, gate.concurrency.in_slow_start)


def estimate_tokens(system_prompt: str | None, prompt: str, max_tokens: int | None) -> int:
    """A conservative token estimate for a call before it is made: the messages by the
    offline estimate of `app.engine.chunking` (which errs high), plus the answer's
    allowance. The tpm bucket is settled with the real usage once the call returns."""
    return (
        count_tokens(system_prompt or "")
        + count_tokens(prompt)
        + (max_tokens or DEFAULT_OUTPUT_ESTIMATE)
    )
