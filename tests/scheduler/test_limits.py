"""FairLimiter, AdaptiveLimiter, TokenBucket and RateLimits, on a fake clock and virtual
sleeps so that timings are exact and nothing really waits."""

from __future__ import annotations

import asyncio
import math

import pytest

from app.scheduler.limits import (
    AdaptiveLimiter,
    AdaptiveSnapshot,
    FairLimiter,
    Outcome,
    Permit,
    RateLimits,
    TokenBucket,
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


class VirtualSleep:
    """Sleeping advances the fake clock by the delay: exact as long as one task sleeps at
    a time, which holds for a token bucket (only the head of its queue sleeps)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.advance(delay)
        await asyncio.sleep(0)


class ManualSleep:
    """Sleeps that end only when the test says so, to cancel sleepers mid-sleep."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, asyncio.Future[None]]] = []

    async def __call__(self, delay: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((delay, fut))
        await fut

    def wake_all(self) -> None:
        for _, fut in self.pending:
            if not fut.done():
                fut.set_result(None)
        self.pending.clear()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ----------------------------------------------------------------------------- FairLimiter


async def test_fair_fast_path_and_counters() -> None:
    lim = FairLimiter(2)
    await lim.acquire("a")
    await lim.acquire("b")
    assert (lim.in_flight, lim.in_flight_of("a"), lim.in_flight_of("b")) == (2, 1, 1)
    waiter = asyncio.create_task(lim.acquire("a"))
    await settle()
    assert (lim.waiting, lim.waiting_of("a"), lim.waiting_of("b")) == (1, 1, 0)
    lim.release("b")
    await waiter
    assert (lim.in_flight_of("a"), lim.in_flight_of("b"), lim.waiting) == (2, 0, 0)
    lim.release("a")
    lim.release("a")
    assert lim.in_flight == 0
    assert lim._jobs == {}  # no per-key state kept for idle keys


async def test_fair_release_without_acquire_and_bad_capacity() -> None:
    lim = FairLimiter(1)
    with pytest.raises(RuntimeError):
        lim.release("nobody")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            FairLimiter(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lim.capacity = 0


async def test_fair_capacity_respected_under_1000_acquirers() -> None:
    lim = FairLimiter(10)
    current = peak = done = 0

    async def call(i: int) -> None:
        nonlocal current, peak, done
        async with lim.slot(f"job{i % 7}"):
            current += 1
            peak = max(peak, current)
            assert lim.in_flight <= lim.capacity
            for _ in range(i % 3 + 1):
                await asyncio.sleep(0)
            current -= 1
        done += 1

    await asyncio.gather(*(call(i) for i in range(1000)))
    assert (peak, done) == (10, 1000)
    assert (lim.in_flight, lim.waiting) == (0, 0)
    assert lim._jobs == {} and not lim._rotation


async def start_waiters(
    lim: FairLimiter, key: str, n: int, grants: list[tuple[str, int]]
) -> list[asyncio.Task[None]]:
    async def wait(i: int) -> None:
        await lim.acquire(key)
        grants.append((key, i))

    tasks = [asyncio.create_task(wait(i)) for i in range(n)]
    await settle()
    return tasks


async def test_fair_round_robin_between_jobs_fifo_within() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    grants: list[tuple[str, int]] = []
    a = await start_waiters(lim, "A", 100, grants)
    b = await start_waiters(lim, "B", 3, grants)
    assert (lim.waiting_of("A"), lim.waiting_of("B")) == (100, 3)

    holder = "A"
    for _ in range(7):
        lim.release(holder)
        await settle()
        holder = grants[-1][0]
    assert grants == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2), ("A", 3)]

    while len(grants) < 103:
        lim.release(holder)
        await settle()
        holder = grants[-1][0]
    assert [i for k, i in grants if k == "A"] == list(range(100))
    lim.release(holder)
    assert (lim.in_flight, lim.waiting) == (0, 0)
    await asyncio.gather(*a, *b)


async def test_fair_new_job_joins_rotation_at_the_back() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    grants: list[tuple[str, int]] = []
    tasks = await start_waiters(lim, "A", 3, grants)
    tasks += await start_waiters(lim, "B", 3, grants)
    lim.release("A")
    await settle()  # A0 granted; rotation is now B, A
    tasks += await start_waiters(lim, "C", 2, grants)
    for _ in range(7):
        lim.release(grants[-1][0])
        await settle()
    assert [k for k, _ in grants] == ["A", "B", "A", "C", "B", "A", "C", "B"]
    lim.release("B")
    await asyncio.gather(*tasks)


async def test_fair_cancelled_waiter_leaks_nothing() -> None:
    lim = FairLimiter(2)
    await lim.acquire("A")
    await lim.acquire("B")
    grants: list[tuple[str, int]] = []
    a = await start_waiters(lim, "A", 3, grants)
    b = await start_waiters(lim, "B", 2, grants)
    a[1].cancel()
    b[0].cancel()
    await settle()
    assert (lim.waiting, lim.waiting_of("A"), lim.waiting_of("B")) == (3, 2, 1)
    assert (lim.in_flight, lim.in_flight_of("A"), lim.in_flight_of("B")) == (2, 1, 1)

    lim.release("A")
    lim.release("B")
    await settle()
    while lim.in_flight:
        for key, _ in list(grants):
            if lim.in_flight_of(key):
                lim.release(key)
        await settle()
    assert sorted(grants) == [("A", 0), ("A", 2), ("B", 1)]
    assert (lim.in_flight, lim.waiting) == (0, 0)
    assert lim._jobs == {} and not lim._rotation
    results = await asyncio.gather(*a, *b, return_exceptions=True)
    assert [isinstance(r, asyncio.CancelledError) for r in results] == [
        False,
        True,
        False,
        True,
        False,
    ]


async def test_fair_slot_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    first = asyncio.create_task(lim.acquire("A"))
    second = asyncio.create_task(lim.acquire("B"))
    await settle()
    lim.release("A")  # hands the slot to `first`...
    assert lim.in_flight_of("A") == 1 and lim.waiting == 1
    first.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert (lim.in_flight_of("A"), lim.in_flight_of("B"), lim.waiting) == (0, 1, 0)
    lim.release("B")
    assert lim.in_flight == 0 and lim._jobs == {}


async def test_fair_timeout_while_waiting() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lim.acquire("B"), 0.001)
    assert (lim.waiting, lim.in_flight) == (0, 1)
    lim.release("A")
    await lim.acquire("B")  # fast path again: no stale waiter in the way
    lim.release("B")
    assert lim._jobs == {} and not lim._rotation


async def test_fair_whole_job_cancelled_others_still_served() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    grants: list[tuple[str, int]] = []
    a = await start_waiters(lim, "A", 50, grants)
    b = await start_waiters(lim, "B", 2, grants)
    for t in a:
        t.cancel()
    await settle()
    assert (lim.waiting_of("A"), lim.waiting) == (0, 2)
    assert list(lim._rotation) == ["B"]
    lim.release("A")
    await settle()
    lim.release("B")
    await settle()
    assert grants == [("B", 0), ("B", 1)]
    lim.release("B")
    await asyncio.gather(*b)
    assert lim._jobs == {}


async def test_fair_release_in_the_same_iteration_as_cancellations() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    grants: list[tuple[str, int]] = []
    a = await start_waiters(lim, "A", 2, grants)
    b = await start_waiters(lim, "B", 1, grants)
    for t in a:
        t.cancel()
    lim.release("A")  # A's turn, but its waiters are cancelled and have not run yet
    await settle()
    assert grants == [("B", 0)]
    assert (lim.in_flight, lim.waiting) == (1, 0) and not lim._rotation
    lim.release("B")
    await asyncio.gather(*b)
    assert lim._jobs == {}


async def test_fair_capacity_change() -> None:
    lim = FairLimiter(1)
    await lim.acquire("A")
    grants: list[tuple[str, int]] = []
    tasks = await start_waiters(lim, "A", 4, grants)
    lim.capacity = 3  # growing wakes waiters at once
    await settle()
    assert grants == [("A", 0), ("A", 1)] and lim.in_flight == 3

    lim.capacity = 1  # shrinking waits for slots to free
    lim.release("A")
    lim.release("A")
    await settle()
    assert len(grants) == 2 and lim.in_flight == 1
    lim.release("A")
    await settle()
    assert len(grants) == 3 and lim.in_flight == 1
    lim.release("A")
    await settle()
    lim.release("A")
    await asyncio.gather(*tasks)
    assert (lim.in_flight, lim.waiting) == (0, 0)


# ------------------------------------------------------------------------- AdaptiveLimiter


def test_adaptive_rejects_bad_parameters() -> None:
    for kwargs in (
        {"initial": 0.5},
        {"minimum": 0},
        {"initial": 300},
        {"increase": 0},
        {"decrease": 1},
        {"decrease": 0},
    ):
        with pytest.raises(ValueError):
            AdaptiveLimiter(**kwargs)


async def test_adaptive_grows_additively_to_maximum() -> None:
    clock = FakeClock(5.0)
    lim = AdaptiveLimiter(slow_start=False, initial=8, maximum=10, clock=clock)
    held = [await lim.acquire() for _ in range(8)]
    assert held[0].granted_at == 5.0 and lim.waiting == 0
    expected = 8.0
    for _ in range(40):
        lim.release(held.pop(0), Outcome.ok)
        expected = min(10.0, expected + 1 / expected)
        assert lim.limit == pytest.approx(expected)
        while lim.in_flight < lim.slots:
            held.append(await lim.acquire())
    assert lim.limit == 10.0 and lim.slots == 10 and lim.in_flight == 10
    # A full window of successes, the window kept full, adds about `increase`.
    lim2 = AdaptiveLimiter(slow_start=False, initial=20, clock=clock)
    permits = [await lim2.acquire() for _ in range(20)]
    for _ in range(20):
        lim2.release(permits.pop(0), Outcome.ok)
        permits.append(await lim2.acquire())
    assert 20.9 < lim2.limit < 21.0


async def test_adaptive_does_not_grow_while_window_mostly_idle() -> None:
    lim = AdaptiveLimiter(slow_start=False, initial=8)
    for _ in range(100):
        lim.release(await lim.acquire(), Outcome.ok)  # 1 of 8 slots in use
    assert lim.limit == 8
    held = [await lim.acquire() for _ in range(3)]
    lim.release(await lim.acquire(), Outcome.ok)  # 4 of 8 in use: counts
    assert lim.limit == 8.125
    for p in held:
        lim.release(p, Outcome.error)
    assert lim.limit == 8.125  # error is neutral


async def test_adaptive_one_decrease_per_window() -> None:
    lim = AdaptiveLimiter(initial=16)
    burst = [await lim.acquire() for _ in range(16)]
    for p in burst:
        lim.release(p, Outcome.overload)
    # One decrease; the other 15 overloads of the window each lower the ceiling by a slot
    # (down to half of it), and the limit stays below the ceiling's decrease.
    assert (lim.limit, lim.decreases, lim.ceiling) == (4, 1, 8)

    later = await lim.acquire()  # granted after the decrease: a new window
    assert later.epoch == 1
    lim.release(later, Outcome.overload)
    assert (lim.limit, lim.decreases, lim.ceiling) == (2, 2, 4)


async def test_adaptive_old_permits_cannot_decrease_again() -> None:
    lim = AdaptiveLimiter(initial=16)
    old = [await lim.acquire() for _ in range(4)]
    lim.release(old.pop(), Outcome.overload)
    new = await lim.acquire()
    for p in old:
        lim.release(p, Outcome.overload)
    # No second decrease, only a slot off the ceiling for each: 16 - 3 = 13.
    assert (lim.limit, lim.decreases, lim.ceiling) == (6.5, 1, 13)
    lim.release(new, Outcome.overload)
    assert (lim.limit, lim.decreases) == (3.25, 2)


async def test_adaptive_bounded_by_minimum_and_maximum() -> None:
    lim = AdaptiveLimiter(initial=8, minimum=2, maximum=9)
    assert (lim.minimum, lim.maximum) == (2, 9)
    for _ in range(10):
        lim.release(await lim.acquire(), Outcome.overload)
    assert lim.limit == 2 and lim.slots == 2 and lim.decreases == 10
    held = []
    for _ in range(200):  # keep the window full, so that every ok counts
        while lim.in_flight < lim.slots:
            held.append(await lim.acquire())
        lim.release(held.pop(0), Outcome.ok)
    assert lim.limit == 9
    for p in held:
        lim.release(p, Outcome.error)
    lim.maximum = 4  # lowering the maximum clamps the limit
    assert lim.limit == 4
    with pytest.raises(ValueError):
        lim.maximum = 1
    # Below one slot the limit still lets one call through.
    tiny = AdaptiveLimiter(initial=0.5, minimum=0.25, maximum=4)
    assert tiny.slots == 1


async def test_adaptive_waiters_wake_when_limit_grows() -> None:
    lim = AdaptiveLimiter(initial=1.9)
    held = await lim.acquire()
    waiters = [asyncio.create_task(lim.acquire()) for _ in range(3)]
    await settle()
    assert (lim.in_flight, lim.waiting) == (1, 3)
    lim.release(held, Outcome.ok)  # 1.9 + 1/1.9 = 2.43: two slots
    await settle()
    assert (lim.in_flight, lim.waiting) == (2, 1)
    assert [w.done() for w in waiters] == [True, True, False]  # FIFO
    for w in waiters[:2]:
        lim.release(w.result(), Outcome.error)
    lim.release(await waiters[2], Outcome.error)
    assert (lim.in_flight, lim.waiting) == (0, 0)


async def test_adaptive_shrink_withholds_until_below_new_limit() -> None:
    lim = AdaptiveLimiter(initial=4)
    held = [await lim.acquire() for _ in range(4)]
    waiter = asyncio.create_task(lim.acquire())
    await settle()
    lim.release(held.pop(), Outcome.overload)  # limit 2, still 3 in flight
    await settle()
    assert lim.limit == 2 and not waiter.done()
    lim.release(held.pop(), Outcome.error)
    await settle()
    assert not waiter.done()
    lim.release(held.pop(), Outcome.error)
    permit = await waiter
    assert lim.in_flight == 2
    lim.release(permit, Outcome.ok)
    lim.release(held.pop(), Outcome.ok)


async def test_adaptive_cancellation_leaks_nothing() -> None:
    lim = AdaptiveLimiter(initial=1)
    held = await lim.acquire()
    first = asyncio.create_task(lim.acquire())
    second = asyncio.create_task(lim.acquire())
    third = asyncio.create_task(lim.acquire())
    await settle()
    second.cancel()
    await settle()
    assert lim.waiting == 2

    lim.release(held, Outcome.error)  # granted to `first`...
    first.cancel()  # ...cancelled in the same iteration: goes to `third`
    with pytest.raises(asyncio.CancelledError):
        await first
    permit = await third
    assert (lim.in_flight, lim.waiting, lim.limit) == (1, 0, 1)
    lim.release(permit, Outcome.error)
    assert lim.in_flight == 0 and lim.waiting == 0
    with pytest.raises(RuntimeError):
        lim.release(permit, Outcome.ok)
    held = await lim.acquire()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lim.acquire(), 0.001)
    assert (lim.in_flight, lim.waiting) == (1, 0)
    lim.release(held, Outcome.ok)
    assert lim.in_flight == 0 and lim.waiting == 0


async def test_adaptive_slot_outcome_defaults() -> None:
    lim = AdaptiveLimiter(slow_start=False, initial=2)
    async with lim.slot() as permit:
        assert isinstance(permit, Permit) and lim.in_flight == 1
    assert lim.limit == 2.5  # clean exit, outcome unset: ok

    with pytest.raises(KeyError):
        async with lim.slot():
            raise KeyError("boom")
    assert lim.limit == 2.5  # exception, outcome unset: error (neutral)

    with pytest.raises(KeyError):
        async with lim.slot() as permit:
            permit.outcome = Outcome.overload
            raise KeyError("429")
    assert lim.limit == 1.25 and lim.decreases == 1  # explicit outcome wins

    async with lim.slot() as permit:
        permit.outcome = Outcome.error
    assert lim.limit == 1.25

    async def hang() -> None:
        async with lim.slot():
            await asyncio.sleep(10)

    task = asyncio.create_task(hang())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (lim.limit, lim.in_flight) == (1.25, 0)
    assert lim.snapshot() == AdaptiveSnapshot(limit=1.25, in_flight=0, waiting=0, decreases=1)


async def simulate(k: int, n_tasks: int = 2000, service_ticks: int = 10) -> tuple[float, float]:
    """Workers each make one successful call against a server that answers 429 when more
    than `k` calls are in progress. Time is counted in event-loop iterations, so the run
    is deterministic. Returns (mean in-flight over the second half, share of overloads)."""
    clock = FakeClock()
    lim = AdaptiveLimiter(clock=clock)
    active = calls = overloads = 0

    async def server() -> Outcome:
        nonlocal active, calls, overloads
        calls += 1
        if active >= k:
            overloads += 1
            await asyncio.sleep(0)
            return Outcome.overload
        active += 1
        for _ in range(service_ticks):
            await asyncio.sleep(0)
        active -= 1
        return Outcome.ok

    async def worker() -> None:
        while True:
            async with lim.slot() as permit:
                permit.outcome = await server()
            if permit.outcome is Outcome.ok:
                return

    tasks = [asyncio.create_task(worker()) for _ in range(n_tasks)]
    samples: list[int] = []
    while not all(t.done() for t in tasks[-50:]) or lim.in_flight:
        samples.append(lim.in_flight)
        clock.advance(1)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    second_half = samples[len(samples) // 2 :]
    return sum(second_half) / len(second_half), overloads / calls


@pytest.mark.parametrize("k", [8, 37, 150])
async def test_adaptive_converges_to_hidden_capacity(k: int) -> None:
    # The limit keeps the upstream's K slots busy and rarely knocks on the cap: it returns
    # to just below the last overload and probes above it slowly.
    mean_in_flight, overload_share = await simulate(k, n_tasks=max(2000, 27 * k))
    assert 0.93 * k <= mean_in_flight <= 1.05 * k
    assert overload_share < 0.03


# ----------------------------------------------------------------------------- TokenBucket


async def test_bucket_rate_and_capacity_exact() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate_per_s=2, capacity=10, clock=clock)
    assert bucket.level == 10  # starts full
    assert bucket.try_take(10) == 0.0
    assert bucket.try_take(1) == 0.5  # nothing taken
    assert bucket.try_take(3) == 1.5
    clock.advance(0.5)
    assert bucket.try_take(1) == 0.0
    assert bucket.level == 0
    clock.advance(2)
    assert bucket.level == 4
    clock.advance(1000)
    assert bucket.level == 10  # capped at capacity
    assert bucket.try_take(0) == 0.0
    with pytest.raises(ValueError):
        bucket.try_take(-1)
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, capacity=1)


async def test_bucket_take_waits_exact_virtual_time() -> None:
    clock = FakeClock()
    sleep = VirtualSleep(clock)
    bucket = TokenBucket(rate_per_s=2, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(10)
    assert clock.now == 0 and sleep.delays == []
    await bucket.take(4)
    assert clock.now == 2.0 and sleep.delays == [2.0]
    await bucket.take(1)
    assert clock.now == 2.5
    assert bucket.level == 0


async def test_bucket_fifo_large_request_not_starved() -> None:
    clock = FakeClock()
    sleep = VirtualSleep(clock)
    bucket = TokenBucket(rate_per_s=2, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(10)
    order: list[tuple[str, float]] = []

    async def taker(name: str, n: float) -> None:
        await bucket.take(n)
        order.append((name, clock.now))

    tasks = [asyncio.create_task(taker("big", 8))]
    tasks += [asyncio.create_task(taker(f"s{i}", 1)) for i in range(4)]
    await asyncio.gather(*tasks)
    assert order == [("big", 4.0), ("s0", 4.5), ("s1", 5.0), ("s2", 5.5), ("s3", 6.0)]
    assert bucket.waiting == 0


async def test_bucket_try_take_behind_queue_only_from_surplus() -> None:
    clock = FakeClock()
    sleep = ManualSleep()
    bucket = TokenBucket(rate_per_s=1, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(8)
    head = asyncio.create_task(bucket.take(4))  # needs 2 more seconds
    await settle()
    assert bucket.waiting == 1
    assert bucket.try_take(1) == 3.0  # behind the queue: 4 for the head, then 1
    clock.advance(4)  # level 6: head's 4 are covered, 2 to spare
    assert bucket.try_take(3) == 1.0
    assert bucket.try_take(2) == 0.0
    sleep.wake_all()
    await head
    assert bucket.level == 0


async def test_bucket_oversize_request_allowed_when_full() -> None:
    clock = FakeClock()
    sleep = VirtualSleep(clock)
    bucket = TokenBucket(rate_per_s=2, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(1)
    assert bucket.try_take(25) == 0.5  # waits for a full bucket, not for 25 tokens
    await bucket.take(25)
    assert clock.now == 0.5 and bucket.level == -15
    await bucket.take(1)  # the debt delays the next taker
    assert clock.now == 0.5 + 8.0


async def test_bucket_adjust_debt_and_refund() -> None:
    clock = FakeClock()
    sleep = VirtualSleep(clock)
    bucket = TokenBucket(rate_per_s=2, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(5)
    bucket.adjust(10)  # the call used 10 more than estimated
    assert bucket.level == -5
    assert bucket.try_take(1) == 3.0
    await bucket.take(1)
    assert clock.now == 3.0
    bucket.adjust(-100)  # refunds are capped at capacity
    assert bucket.level == 10


async def test_bucket_cancelled_takers_take_nothing_and_pass_the_turn() -> None:
    clock = FakeClock()
    sleep = ManualSleep()
    bucket = TokenBucket(rate_per_s=1, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(10)
    head = asyncio.create_task(bucket.take(5))
    middle = asyncio.create_task(bucket.take(1))
    last = asyncio.create_task(bucket.take(2))
    await settle()
    assert [d for d, _ in sleep.pending] == [5.0] and bucket.waiting == 3
    middle.cancel()
    await settle()
    assert bucket.waiting == 2
    head.cancel()  # cancelled mid-sleep: the turn goes to `last`, skipping `middle`
    await settle()
    assert [d for d, _ in sleep.pending] == [5.0, 2.0]
    clock.advance(2)
    sleep.wake_all()
    await last
    assert bucket.level == 0 and bucket.waiting == 0 and not bucket._queue
    for t in (head, middle):
        with pytest.raises(asyncio.CancelledError):
            await t


async def test_bucket_turn_given_to_a_cancelled_taker_is_passed_on() -> None:
    clock = FakeClock()
    sleep = ManualSleep()
    bucket = TokenBucket(rate_per_s=1, capacity=10, clock=clock, sleep=sleep)
    await bucket.take(10)
    head = asyncio.create_task(bucket.take(1))
    second = asyncio.create_task(bucket.take(1))
    third = asyncio.create_task(bucket.take(1))
    await settle()
    clock.advance(3)
    sleep.wake_all()
    await asyncio.sleep(0)  # `head` runs first in this iteration, hands the turn to `second`
    assert head.done() and not second.done()
    second.cancel()  # ...which is cancelled before it could run
    await third
    assert bucket.level == 1 and not bucket._queue
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_rate_limits_admit_and_settle() -> None:
    clock = FakeClock()
    sleep = VirtualSleep(clock)
    limits = RateLimits(rpm=60, tpm=600, clock=clock, sleep=sleep)
    assert limits.requests is not None and limits.tokens is not None
    assert (limits.requests.capacity, limits.requests.rate_per_s) == (60, 1)
    assert (limits.tokens.capacity, limits.tokens.rate_per_s) == (600, 10)

    await limits.admit(500)
    assert (limits.requests.level, limits.tokens.level) == (59, 100)
    await limits.admit(300)  # 200 tokens short: 20 s at 10 tokens/s
    assert clock.now == 20.0
    limits.settle(300, 100)  # used fewer than estimated: refund
    assert limits.tokens.level == 200
    limits.settle(100, 400)  # used more: debt
    assert limits.tokens.level == -100
    await limits.admit(0)
    assert clock.now == 30.0


async def test_rate_limits_rpm_and_oversize_estimate() -> None:
    clock = FakeClock()
    sleep = VirtualSleep(clock)
    limits = RateLimits(rpm=2, tpm=None, clock=clock, sleep=sleep)
    assert limits.tokens is None
    for _ in range(3):
        await limits.admit(10**9)
    assert clock.now == 30.0  # 2 per minute
    limits.settle(10**9, 1)  # no token limit: nothing to settle

    big = RateLimits(rpm=None, tpm=600, clock=clock, sleep=sleep)
    await big.admit(1000)  # larger than a minute's worth: allowed on a full bucket
    assert big.tokens is not None and big.tokens.level == -400
    unlimited = RateLimits(None, None)
    await unlimited.admit(10**9)
    with pytest.raises(ValueError):
        RateLimits(rpm=0, tpm=None)


async def test_rate_limits_cancelled_admit_refunds_the_request() -> None:
    clock = FakeClock()
    sleep = ManualSleep()
    limits = RateLimits(rpm=60, tpm=600, clock=clock, sleep=sleep)
    assert limits.requests is not None and limits.tokens is not None
    await limits.admit(600)
    waiting = asyncio.create_task(limits.admit(100))
    await settle()
    assert limits.requests.level == 58 and limits.tokens.waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert limits.requests.level == 59 and limits.tokens.level == 0
    assert math.isclose(limits.tokens.try_take(100), 10.0)


async def test_adaptive_waiters_of_different_jobs_take_turns() -> None:
    lim = AdaptiveLimiter(initial=1, maximum=1)
    held = await lim.acquire("big")
    order: list[str] = []

    async def call(key: str) -> None:
        permit = await lim.acquire(key)
        order.append(key)
        await asyncio.sleep(0)
        lim.release(permit, Outcome.ok)

    tasks = [asyncio.create_task(call("big")) for _ in range(20)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call("small")) for _ in range(3)]
    await asyncio.sleep(0)
    lim.release(held, Outcome.ok)
    await asyncio.gather(*tasks)
    # The small job, queued behind 20 calls of the big one, is served every other turn.
    assert order[:6] == ["big", "small", "big", "small", "big", "small"]
    assert lim.in_flight == 0 and lim.waiting == 0


async def test_adaptive_slow_start_doubles_per_window_until_the_first_overload() -> None:
    lim = AdaptiveLimiter(initial=4, maximum=1000)
    held = [await lim.acquire() for _ in range(lim.slots)]

    async def one_window() -> None:
        # Every call of the window returns ok and is replaced at once (a busy swarm).
        for _ in range(lim.slots):
            lim.release(held.pop(0), Outcome.ok)
            while lim.in_flight < lim.slots:
                held.append(await lim.acquire())

    for expected in (8, 16, 32):
        await one_window()
        assert lim.limit == expected
    lim.release(held.pop(0), Outcome.overload)
    assert lim.limit == 16 and lim.ceiling == 32
    await one_window()
    # After the first overload the limit returns at once to just below where it came…
    assert 0.95 * 32 <= lim.limit < 0.95 * 32 + 0.1
    await one_window()
    # …and then creeps: a tenth of the way to the ceiling per window.
    assert 30.45 < lim.limit <= 30.4 + 0.25


async def test_permits_waiting_for_other_limits_do_not_grow_the_limit() -> None:
    lim = AdaptiveLimiter(initial=8, maximum=256)
    # Eight permits held, but only one call really made at a time (the rest wait for a
    # global slot elsewhere): the window is not in use, so the limit must not grow.
    for _ in range(50):
        parked = [await lim.acquire(active=False) for _ in range(7)]
        running = await lim.acquire(active=False)
        lim.activate(running)
        lim.release(running, Outcome.ok)
        for p in parked:
            lim.release(p, Outcome.ok)
    assert lim.limit == 8 and lim.active == 0


async def test_groups_take_turns_before_their_keys() -> None:
    lim = FairLimiter(1)
    await lim.acquire("hold", "x")
    order: list[str] = []

    async def call(key: str, group: str) -> None:
        await lim.acquire(key, group)
        order.append(key)
        await asyncio.sleep(0)
        lim.release(key)

    # Tenant "many" queues three jobs of 4 calls each; tenant "one" a single job of 4.
    tasks = [asyncio.create_task(call(job, "many")) for job in ("m1", "m2", "m3") for _ in range(4)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call("o1", "one")) for _ in range(4)]
    await asyncio.sleep(0)
    lim.release("hold")
    await asyncio.gather(*tasks)
    # Tenants alternate; within "many" its jobs alternate.
    assert order[:8] == ["m1", "o1", "m2", "o1", "m3", "o1", "m1", "o1"]
    assert lim.in_flight == 0 and lim.waiting == 0


async def busy_windows(lim: AdaptiveLimiter, held: list[Permit], n: int) -> list[float]:
    """`n` windows of successes with the window kept full (a busy swarm); the limit after
    each window."""
    seen = []
    for _ in range(n):
        for _ in range(lim.slots):
            lim.release(held.pop(0), Outcome.ok)
            while lim.in_flight < lim.slots:
                held.append(await lim.acquire())
        seen.append(lim.limit)
    return seen


@pytest.mark.parametrize("ceiling", [9.0, 40.0, 151.0])
async def test_after_an_overload_the_limit_returns_below_it_fast_and_probes_slowly(
    ceiling: float,
) -> None:
    lim = AdaptiveLimiter(initial=ceiling, maximum=1000, decrease=0.7, slow_start=False)
    held = [await lim.acquire() for _ in range(lim.slots)]
    lim.release(held.pop(0), Outcome.overload)  # a 429 at limit L = ceiling
    assert lim.limit == pytest.approx(0.7 * ceiling) and lim.ceiling == ceiling
    while lim.in_flight < lim.slots:
        held.append(await lim.acquire())
    limits = await busy_windows(lim, held, 30)
    # Back near 0.9 L within two windows, not the ten or more of additive increase…
    assert limits[1] >= 0.9 * ceiling
    # …no slot above L for the next eight windows (the cap that said 429 is left alone)…
    assert max(limits[:9]) < ceiling
    # …then probing past it, faster the longer no overload comes.
    crossed = next(i for i, x in enumerate(limits) if x >= ceiling)
    assert crossed <= 13
    steps = [b - a for a, b in zip(limits[crossed:], limits[crossed + 1 :], strict=False)]
    assert steps[3] > steps[0] > 0


async def test_an_overload_below_the_ceiling_lowers_it() -> None:
    lim = AdaptiveLimiter(initial=40, maximum=1000, decrease=0.5, slow_start=False)
    lim.release(await lim.acquire(), Outcome.overload)
    assert (lim.limit, lim.ceiling) == (20, 40)
    lim.release(await lim.acquire(), Outcome.overload)  # the upstream shrank: remember 20
    assert (lim.limit, lim.ceiling) == (10, 20)
    held = [await lim.acquire() for _ in range(lim.slots)]
    limits = await busy_windows(lim, held, 3)
    assert limits[-1] < 20


async def test_without_an_overload_to_remember_growth_stays_additive() -> None:
    # A learned limit (past slow start, no overload seen by this run) grows by about one
    # slot per window.
    lim = AdaptiveLimiter(initial=20, maximum=1000, slow_start=False)
    held = [await lim.acquire() for _ in range(lim.slots)]
    limits = await busy_windows(lim, held, 3)
    assert 22.5 < limits[-1] < 23.5 and lim.ceiling == 0


async def test_a_spent_upstream_quota_holds_new_calls_until_its_reset() -> None:
    clock = FakeClock(100.0)
    sleep = VirtualSleep(clock)
    lim = AdaptiveLimiter(initial=8, clock=clock, sleep=sleep)
    lim.note_quota(2, 5.0)  # "2 requests left, replenished in 5 s"
    await lim.within_quota()
    await lim.within_quota()
    assert lim.quota_hold_s == 5.0 and sleep.delays == []
    # The third call waits the whole reset, by the fake clock, instead of meeting a 429.
    await lim.within_quota()
    assert sleep.delays == [5.0] and clock() == 105.0
    # After the reset nothing is known, so nothing is held.
    await lim.within_quota()
    assert sleep.delays == [5.0] and lim.quota_hold_s == 0


async def test_a_held_call_can_be_cancelled_and_a_fresh_quota_lets_calls_on() -> None:
    clock = FakeClock()
    gate = ManualSleep()
    lim = AdaptiveLimiter(initial=8, clock=clock, sleep=gate)
    lim.note_quota(0, 30.0)
    async with lim.slot("job") as permit:
        held = asyncio.create_task(lim.within_quota())
        await settle()
        assert not held.done() and lim.quota_hold_s == 30.0
        held.cancel()
        await settle()
        permit.outcome = Outcome.error
    assert held.cancelled() and lim.in_flight == 0
    # A later answer says requests are left again: calls go at once.
    lim.note_quota(10, 30.0)
    await asyncio.wait_for(lim.within_quota(), 1)


async def test_the_429s_of_one_window_say_how_far_over_the_cap_it_was() -> None:
    # Sixteen calls sent at once to an upstream that takes eight: eight 429s.
    lim = AdaptiveLimiter(initial=16, maximum=256, decrease=0.8)
    held = [await lim.acquire() for _ in range(16)]
    for p in held[8:]:
        lim.release(p, Outcome.overload)
    assert lim.ceiling == 9 and lim.limit == pytest.approx(0.8 * 9)
    for p in held[:8]:
        lim.release(p, Outcome.ok)
    # Then back to just below the cap, not above it.
    held = [await lim.acquire() for _ in range(lim.slots)]
    limits = await busy_windows(lim, held, 5)
    assert all(8 <= x < 9 for x in limits[1:])
