"""Limits shared over the machine's real Redis by several limiter instances, as separate
worker processes would hold them: one limit between them, a dead holder's slots coming
back, overloads seen by one shrinking the limit of all, and the fallback while Redis is
away."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from app.config import Settings
from app.scheduler.gates import Gates, LimitsConfigError, limits_divisor
from app.scheduler.limits import AdaptiveLimiter, Outcome, Permit
from app.scheduler.shared_limits import (
    SharedAdaptiveLimiter,
    SharedFairLimiter,
    SharedLimits,
    SharedTokenBucket,
)
from app.upstream.registry import ModelInfo
from tests.helpers.redis import REDIS_URL
from tests.scheduler.redis_server import RedisServer


@pytest.fixture
async def workers(redis_prefix: str) -> AsyncIterator[list[SharedLimits]]:
    """Three processes' links to one Redis (each its own client, id and heartbeat)."""
    links = [SharedLimits(REDIS_URL, prefix=redis_prefix, lease_s=1.0) for _ in range(3)]
    yield links
    for link in links:
        await link.close()


class Peak:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.by_worker: dict[int, int] = {}

    async def call(self, limiter: SharedAdaptiveLimiter, worker: int, key: str) -> None:
        async with limiter.slot(key) as permit:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.by_worker[worker] = self.by_worker.get(worker, 0) + 1
            await asyncio.sleep(0.02)
            self.now -= 1
            permit.outcome = Outcome.error  # neutral: the limit stays put


async def test_three_workers_share_one_model_limit(workers: list[SharedLimits]) -> None:
    limiters = [SharedAdaptiveLimiter(w, "m", initial=4, maximum=4) for w in workers]
    peak = Peak()
    await asyncio.gather(*(peak.call(limiters[i % 3], i % 3, f"job{i % 3}") for i in range(60)))
    # Separately each would have let 4 in at once: together, 4 in all.
    assert peak.peak == 4
    assert peak.by_worker == {0: 20, 1: 20, 2: 20}


async def test_no_worker_is_starved_of_a_shared_limit(workers: list[SharedLimits]) -> None:
    """A worker with a long backlog does not keep the slots it frees for itself."""
    busy, late = (SharedAdaptiveLimiter(w, "m", initial=2, maximum=2) for w in workers[:2])
    order: list[str] = []

    async def call(limiter: SharedAdaptiveLimiter, who: str) -> None:
        async with limiter.slot(who) as permit:
            order.append(who)
            await asyncio.sleep(0.03)
            permit.outcome = Outcome.error

    backlog = [asyncio.create_task(call(busy, "busy")) for _ in range(40)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.gather(*(call(late, "late") for _ in range(3)))
    # Its 3 calls go in turn with the busy worker's, not after its 38 waiting ones.
    assert time.monotonic() - started < 0.6
    assert order.index("late") < 10
    await asyncio.gather(*backlog)


async def test_an_overload_on_one_worker_shrinks_the_limit_of_all(
    workers: list[SharedLimits],
) -> None:
    a, b = (
        SharedAdaptiveLimiter(w, "m", initial=10, maximum=10, decrease=0.5) for w in workers[:2]
    )
    first, second = await a.acquire("job"), await a.acquire("job")
    a.release(first, Outcome.overload)
    await workers[0].flush()
    permit = await b.acquire("job")
    assert b.limit == 5
    assert not b.in_slow_start
    # One cut per window: an overload on a permit granted before the cut only takes a
    # slot off the ceiling (10 → 9, the limit kept below 9 x 0.5).
    a.release(second, Outcome.overload)
    await workers[0].flush()
    b.release(permit, Outcome.overload)  # granted after the cut: cuts again
    await workers[1].flush()
    permit = await a.acquire("job")
    assert a.limit == 2.25 and a.decreases == 2
    a.release(permit, Outcome.error)


async def test_the_shared_limit_follows_the_same_rule_as_the_local_one(
    workers: list[SharedLimits],
) -> None:
    """After an overload at L both return fast to just below L and probe slowly above it,
    success by success the same figures."""
    kwargs = {"initial": 10.0, "maximum": 100.0, "decrease": 0.7, "slow_start": False}
    local = AdaptiveLimiter(**kwargs)  # type: ignore[arg-type]
    shared = SharedAdaptiveLimiter(workers[0], "m", **kwargs)  # type: ignore[arg-type]
    held: dict[str, list[Permit]] = {"local": [], "shared": []}

    async def step(outcome: Outcome) -> tuple[float, float]:
        for name, lim in (("local", local), ("shared", shared)):
            permits = held[name]
            while len(permits) < max(1, math.floor(lim.limit)):
                permits.append(await lim.acquire("job"))
            lim.release(permits.pop(0), outcome)
            await workers[0].flush()
        return local.limit, shared.limit  # the shared one as the release script left it

    a, b = await step(Outcome.overload)
    assert a == b == pytest.approx(7.0) and local.ceiling == 10
    for _ in range(60):
        a, b = await step(Outcome.ok)
        assert b == pytest.approx(a, abs=1e-6)
    assert 9.5 <= a < 10.5
    for lim in (local, shared):
        for permit in held["local" if lim is local else "shared"]:
            lim.release(permit, Outcome.error)
    await workers[0].flush()


async def test_learned_limit_seeds_the_shared_one_and_is_read_back(
    workers: list[SharedLimits],
) -> None:
    first = SharedAdaptiveLimiter(workers[0], "m", initial=24, maximum=64, slow_start=False)
    second = SharedAdaptiveLimiter(workers[1], "m", initial=8, maximum=64)
    permit = await first.acquire("job")
    first.release(permit, Outcome.error)
    permit = await second.acquire("job")
    second.release(permit, Outcome.error)
    # The first to use the model seeds it; the later one takes the shared value over.
    assert second.limit == 24
    assert not second.in_slow_start


async def test_a_dead_workers_slots_expire_with_its_lease(workers: list[SharedLimits]) -> None:
    dead, alive = (SharedAdaptiveLimiter(w, "m", initial=2, maximum=2) for w in workers[:2])
    await dead.acquire("job")
    await dead.acquire("job")
    # kill -9: its heartbeat stops renewing, nothing is released.
    await workers[0].close()
    started = time.monotonic()
    permit = await asyncio.wait_for(alive.acquire("job"), timeout=5)
    waited = time.monotonic() - started
    assert 0.5 < waited < 2.5  # the lease is 1 s
    alive.release(permit, Outcome.ok)


async def test_slots_held_by_a_live_worker_do_not_expire(workers: list[SharedLimits]) -> None:
    holder, other = (SharedAdaptiveLimiter(w, "m", initial=1, maximum=1) for w in workers[:2])
    permit = await holder.acquire("job")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other.acquire("job"), timeout=2.5)  # 2.5 leases
    holder.release(permit, Outcome.ok)
    permit = await asyncio.wait_for(other.acquire("job"), timeout=2)
    other.release(permit, Outcome.ok)


async def test_the_global_limit_is_shared(workers: list[SharedLimits]) -> None:
    slots = [SharedFairLimiter(w, "global", 3) for w in workers]
    now = peak = 0

    async def call(limiter: SharedFairLimiter, key: str) -> None:
        nonlocal now, peak
        async with limiter.slot(key):
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.02)
            now -= 1

    await asyncio.gather(*(call(slots[i % 3], f"job{i}") for i in range(30)))
    assert peak == 3


async def test_fairness_between_jobs_holds_within_a_worker(workers: list[SharedLimits]) -> None:
    limiter = SharedAdaptiveLimiter(workers[0], "m", initial=1, maximum=1)
    order: list[str] = []

    async def call(key: str) -> None:
        async with limiter.slot(key) as permit:
            order.append(key)
            await asyncio.sleep(0.01)
            permit.outcome = Outcome.error

    big = [asyncio.create_task(call("big")) for _ in range(6)]
    await asyncio.sleep(0.005)
    small = asyncio.create_task(call("small"))
    await asyncio.gather(*big, small)
    # The small job's one call takes its turn with the big job's, not after all of them
    # (one big call already asking Redis goes first, in-process it would be two calls).
    assert order.index("small") <= 3
    assert order[-1] == "big"


async def test_rate_buckets_are_shared(workers: list[SharedLimits]) -> None:
    a, b = (SharedTokenBucket(w, "m:rpm", rate_per_s=1, capacity=60) for w in workers[:2])
    assert await a.try_take_shared(40) == 0
    wait = await b.try_take_shared(30)
    assert wait == pytest.approx(10, abs=0.5)  # 20 left: 10 more at 1/s
    assert await b.try_take_shared(20) == 0
    a.adjust(-15)  # a refund of what a call did not use
    await workers[0].flush()
    assert await b.try_take_shared(15) == 0


async def test_redis_lost_and_back(private_redis: RedisServer, redis_prefix: str) -> None:
    """Redis stops mid-run: calls go on under this process's share of the limit (the limit
    divided by the processes last seen alive), said in the log; when it is back the limit
    is shared again, re-seeded from what was last known."""
    async with AsyncExitStack() as stack:
        links = [SharedLimits(private_redis.url, prefix=redis_prefix, lease_s=1.0) for _ in "ab"]
        for link in links:
            stack.push_async_callback(link.close)
            await link.beat()
        limiter = SharedAdaptiveLimiter(links[0], "m", initial=8, maximum=8)
        permit = await limiter.acquire("job")
        limiter.release(permit, Outcome.ok)
        await links[0].flush()
        assert links[0].live == 2

        private_redis.stop()
        peak = now = 0

        async def call() -> None:
            nonlocal peak, now
            async with limiter.slot("job") as p:
                now += 1
                peak = max(peak, now)
                await asyncio.sleep(0.02)
                now -= 1
                p.outcome = Outcome.error

        await asyncio.wait_for(asyncio.gather(*(call() for _ in range(20))), timeout=10)
        assert not links[0].available
        assert links[0].fallbacks == 1
        assert peak == 4  # half of 8: two processes were alive

        private_redis.start()  # restarted, its data lost
        deadline = time.monotonic() + 5
        while not links[0].available and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert links[0].available
        permit = await limiter.acquire("job")
        assert limiter.limit == 8  # re-seeded from the last shared value
        limiter.release(permit, Outcome.error)


async def test_fallback_is_logged(
    private_redis: RedisServer, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    link = SharedLimits(private_redis.url, prefix=redis_prefix, lease_s=1.0)
    try:
        limiter = SharedFairLimiter(link, "global", 4)
        private_redis.stop()
        async with limiter.slot("job"):
            pass
        assert "Redis is unreachable" in caplog.text
        assert "1/1" in caplog.text
        assert limiter.capacity == 4
    finally:
        await link.close()


def test_a_worker_without_redis_must_declare_the_worker_count() -> None:
    with pytest.raises(LimitsConfigError, match="SWARM_WORKER_COUNT"):
        limits_divisor(Settings(role="worker"))
    assert limits_divisor(Settings(role="all")) == 1
    assert limits_divisor(Settings(role="worker", redis_url=REDIS_URL, worker_count=3)) == 1


def test_without_redis_each_worker_takes_its_share() -> None:
    gates = Gates(Settings(role="worker", worker_count=3, global_concurrency=30))
    assert gates.global_slots.capacity == 10
    gate = gates.for_model(ModelInfo(name="m", max_concurrency=12, rpm=600, tpm=None))
    assert gate.concurrency.maximum == 4
    assert gate.rate is not None and gate.rate.requests is not None
    assert gate.rate.requests.capacity == 200


async def test_gates_share_models_and_save_the_shared_limit(redis_prefix: str) -> None:
    """Two processes' gates over one Redis: a model's limit cut by one is the limit the
    other shows, saves (model_limits) and reports in /metrics."""
    settings = Settings(
        redis_url=REDIS_URL, redis_key_prefix=redis_prefix, model_concurrency_initial=16
    )
    first, second = Gates(settings), Gates(settings)
    try:
        info = ModelInfo(name="m")
        a, b = first.for_model(info).concurrency, second.for_model(info).concurrency
        assert isinstance(a, SharedAdaptiveLimiter)
        permit = await a.acquire("job")
        a.release(permit, Outcome.overload)
        assert first.shared is not None
        await first.shared.flush()
        permit = await b.acquire("job")
        b.release(permit, Outcome.error)
        assert second.shared is not None
        await second.shared.flush()
        learned = second.learned_limits()["m"]
        assert learned.limit == pytest.approx(16 * settings.adaptive_decrease)
        assert not learned.slow_start
        assert b.snapshot().limit == learned.limit
    finally:
        await first.close()
        await second.close()


async def test_a_bucket_falls_back_to_its_share(
    private_redis: RedisServer, redis_prefix: str
) -> None:
    links = [SharedLimits(private_redis.url, prefix=redis_prefix, lease_s=1.0) for _ in "abc"]
    try:
        for link in [*links, links[0]]:
            await link.beat()
        assert links[0].live == 3
        bucket = SharedTokenBucket(links[0], "m:rpm", rate_per_s=3, capacity=180)
        assert await bucket.try_take_shared(100) == 0
        private_redis.stop()
        # A third of the bucket now, in this process alone: 60 at once, then 1 a second.
        assert await bucket.try_take_shared(60) == 0
        assert await bucket.try_take_shared(1) > 0
        assert not links[0].available
    finally:
        for link in links:
            await link.close()


async def test_a_dropped_limiter_is_not_kept_alive(workers: list[SharedLimits]) -> None:
    import gc
    import weakref

    limiter = SharedAdaptiveLimiter(workers[0], "m", initial=2, maximum=2)
    ref = weakref.ref(limiter)
    del limiter
    gc.collect()
    assert ref() is None
