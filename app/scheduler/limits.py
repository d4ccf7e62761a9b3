"""Asyncio concurrency primitives for the scheduler: fair global slots, an AIMD limit per
model, and (from app.scheduler.token_buckets) the token buckets for declared rpm/tpm limits.
No I/O; time comes from an injected clock."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from app.scheduler.token_buckets import Clock, RateLimits, Sleep, TokenBucket

__all__ = [
    "AdaptiveLimiter",
    "AdaptiveSnapshot",
    "Clock",
    "DelayGradient",
    "FairLimiter",
    "Outcome",
    "Permit",
    "RateLimits",
    "Sleep",
    "TokenBucket",
]


# --------------------------------------------------------------------------- fair slots


class _Job:
    __slots__ = ("group", "in_flight", "queue", "waiting")

    def __init__(self, group: str) -> None:
        self.group = group
        self.in_flight = 0
        # Waiters still owed a slot. `queue` may also hold futures already cancelled: they
        # are skipped when they reach the front, so that cancelling stays O(1).
        self.waiting = 0
        self.queue: deque[asyncio.Future[None]] = deque()


class FairLimiter:
    """Global concurrency slots shared fairly between jobs.

    Fairness policy: while slots are free nobody waits. Once callers have to wait, each
    freed slot goes to the next job (key) in a round-robin rotation of the jobs that have
    waiters, and within a job to its oldest waiter. A job enters the rotation at the back
    when its first call starts waiting and leaves it when it has no waiters left. So a job
    with 10,000 queued calls and one with 3 queued calls submitted later take turns, slot
    by slot, instead of the small job waiting behind the large one's backlog. The policy
    counts grants, not slots held: a job's calls already in flight do not lower its turn.

    `capacity` can change at run time: growing it hands the new slots to waiters at once;
    shrinking it never interrupts calls in flight, it only withholds grants until enough
    slots have been released.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = _check_capacity(capacity)
        self._in_flight = 0
        self._waiting = 0
        self._jobs: dict[str, _Job] = {}
        # Groups (tenants) with waiters, front = next to be served; in each, its keys (jobs)
        # with waiters, front = next to be served.
        self._rotation: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = _check_capacity(value)
        self._wake()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    def in_flight_of(self, key: str) -> int:
        job = self._jobs.get(key)
        return 0 if job is None else job.in_flight

    def waiting_of(self, key: str) -> int:
        job = self._jobs.get(key)
        return 0 if job is None else job.waiting

    async def acquire(self, key: str, group: str | None = None) -> None:
        """Wait for a slot for `key` (a job); `group` (its tenant) takes turns with other
        groups first, so a tenant with many jobs gets no more than one with a single job."""
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = _Job(key if group is None else group)
        if self._in_flight < self._capacity and not self._rotation:
            job.in_flight += 1
            self._in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job.queue.append(fut)
        job.waiting += 1
        self._waiting += 1
        self._rotation.setdefault(job.group, OrderedDict())[key] = None
        # The rotation may hold only cancelled waiters while a slot is free.
        self._wake()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us in the same loop iteration as the cancellation:
                # pass it on rather than leak it.
                self.release(key)
            else:
                fut.cancel()
                self._drop_waiter(key, job)
            raise

    def release(self, key: str) -> None:
        job = self._jobs.get(key)
        if job is None or job.in_flight == 0:
            raise RuntimeError(f"release({key!r}) without a matching acquire")
        job.in_flight -= 1
        self._in_flight -= 1
        if job.in_flight == 0 and job.waiting == 0:
            del self._jobs[key]
        self._wake()

    def slot(self, key: str, group: str | None = None) -> AbstractAsyncContextManager[None]:
        return _FairSlot(self, key, group)

    def _drop_waiter(self, key: str, job: _Job) -> None:
        job.waiting -= 1
        self._waiting -= 1
        if job.waiting == 0:
            # Everything left in the queue is cancelled: free it now, not when its turn comes.
            job.queue.clear()
            self._unrotate(job.group, key)
            if job.in_flight == 0:
                del self._jobs[key]

    def _unrotate(self, group: str, key: str) -> None:
        keys = self._rotation.get(group)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._rotation[group]

    def _wake(self) -> None:
        while self._in_flight < self._capacity and self._rotation:
            group, keys = next(iter(self._rotation.items()))
            key = next(iter(keys))
            job = self._jobs[key]
            queue = job.queue
            while queue and queue[0].done():
                queue.popleft()
            if not queue:
                self._unrotate(group, key)
                continue
            fut = queue.popleft()
            job.waiting -= 1
            self._waiting -= 1
            job.in_flight += 1
            self._in_flight += 1
            fut.set_result(None)
            if job.waiting == 0:
                queue.clear()
            if queue:
                keys.move_to_end(key)
            else:
                del keys[key]
            if keys:
                self._rotation.move_to_end(group)
            else:
                del self._rotation[group]


class _FairSlot:
    __slots__ = ("_group", "_key", "_limiter")

    def __init__(self, limiter: FairLimiter, key: str, group: str | None) -> None:
        self._limiter = limiter
        self._key = key
        self._group = group

    async def __aenter__(self) -> None:
        await self._limiter.acquire(self._key, self._group)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limiter.release(self._key)


def _check_capacity(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"capacity must be an int >= 1, got {value!r}")
    return value


# ------------------------------------------------------------------------ adaptive limit


class Outcome(StrEnum):
    """How an upstream call ended, as far as congestion control is concerned."""

    ok = "ok"
    overload = "overload"  # 429 or a time-out: the upstream is saturated
    error = "error"  # anything else; says nothing about load, so the limit is left alone


@dataclass(slots=True, eq=False)
class Permit:
    """One granted slot of an AdaptiveLimiter.

    `epoch` is the limiter's decrease count at grant time: an overload reported on this
    permit lowers the limit only if no decrease happened since it was granted.
    """

    granted_at: float
    epoch: int
    key: str = ""
    outcome: Outcome | None = None
    # Set by `activate`: the call is really made (not still waiting for other limits).
    active: bool = False
    # The slot's id in Redis when the limit is shared across processes (None: granted by
    # this process alone).
    shared: str | None = None
    # Of a successful streamed call: seconds to its first chunk (queueing shows here).
    first_token_s: float | None = None
    _released: bool = field(default=False, init=False, repr=False)


class DelayGradient:
    """Queueing seen in the time to first token, in the style of TCP Vegas and Netflix's
    Gradient2: a server that queues instead of answering 429 (llama.cpp, vLLM) shows its
    queue as a first token that comes later and later. The floor is the fastest first
    token seen (allowed to drift up slowly, so a server that really got slower is not
    mistaken for a queue for ever); the recent figure is a moving average, so one long
    prompt's slow prefill does not count as queueing. Pure arithmetic."""

    # Queueing when the recent first token takes this many times the floor… (a server's
    # own spread of prompt-processing times stays well under it; a queue behind N slots
    # adds whole answers, seconds each, to the wait)
    RATIO = 3.0
    # …and at least this much longer: on a fast server, tripling 50 ms is noise.
    MIN_EXCESS_S = 0.5
    # Weight of each new sample in the moving average, and the most a sample counts for,
    # as a multiple of that average.
    SMOOTHING = 0.2
    OUTLIER_CAP = 2.0
    # How much the floor may rise per sample (about doubling in 70 samples).
    FLOOR_DRIFT = 0.01

    def __init__(self) -> None:
        self.floor: float | None = None
        self.recent: float | None = None

    def observe(self, first_token_s: float) -> bool:
        """Fold in one sample; whether the upstream is queueing now."""
        if first_token_s < 0:
            return False
        if self.floor is None or self.recent is None:
            self.floor = self.recent = first_token_s
            return False
        self.floor = min(self.floor * (1 + self.FLOOR_DRIFT), first_token_s)
        # One sample moves the average by a bounded step: a single slow outlier is not a
        # queue, a queue shows in sample after sample.
        sample = min(first_token_s, self.recent * self.OUTLIER_CAP)
        self.recent += self.SMOOTHING * (sample - self.recent)
        excess = self.recent - self.floor
        return self.recent > self.floor * self.RATIO and excess > self.MIN_EXCESS_S


# After an overload at limit W (the ceiling, CUBIC's W_max), the limit comes back fast to
# this share of W: the upstream took about W at once, so just below it is safe…
RETURN_SHARE = 0.95
# …then crosses the rest of the way to W in about this many windows: every crossing of a
# hard cap costs a 429 and a retry, so at K = 8 (eight calls a window) one in ten windows
# keeps 429s near 1 %…
PROBE_WINDOWS = 10
# …and past W each window adds this share of its distance above W on top of that slow
# step (a convex probe): an upstream whose capacity grew is found in a few more windows.
CONVEX = 0.5
# Each further overload among the calls of the window that overloaded says the limit was
# one slot more over the cap (16 calls sent, 8 answered 429: the cap is near 8), and
# lowers the ceiling by one, but not below this share of it: a quota spent for the
# minute answers every call 429 whatever the concurrency.
EXTRA_OVERLOAD_FLOOR = 0.5


def grown(limit: float, ceiling: float, *, slow_start: bool, increase: float) -> float:
    """The limit after one success that counts (the window at least half in use), before
    the maximum is applied. ``ceiling`` is the limit at the last overload (0: none yet).
    The same rule runs in Redis for a shared limit (app/scheduler/redis_scripts.RELEASE)."""
    if slow_start:
        return limit + increase
    if ceiling <= 0:
        # Past slow start without an overload to remember (a learned limit): plain AIMD.
        return limit + increase / limit
    target = ceiling * RETURN_SHARE
    if limit < target:
        return min(target, limit + increase)
    probe = (ceiling - target) / PROBE_WINDOWS  # slots per window
    if limit < ceiling:
        return limit + probe / limit
    return limit + (probe + (limit - ceiling) * CONVEX) / limit


@dataclass(frozen=True, slots=True)
class AdaptiveSnapshot:
    limit: float
    in_flight: int
    waiting: int
    decreases: int


class AdaptiveLimiter:
    """Adaptive concurrency limit for one upstream model (TCP congestion control, by calls,
    with CUBIC's memory of where the last overload came).

    - `ok` raises the limit (`grown`), but only while at least half the window is in use,
      so a model with little traffic does not drift to `maximum` and then flood the
      upstream when a big swarm arrives (Netflix concurrency-limits does the same). After
      an overload at limit W (`ceiling`) the limit returns fast (a whole `increase` per
      success) to `RETURN_SHARE` of W, creeps from there to W in about `PROBE_WINDOWS`
      windows, and probes above W at a pace that grows with the distance. With no
      overload to remember (a limit learned by an earlier run) a window adds `increase`.
    - `overload` remembers the limit as the ceiling and multiplies the limit by
      `decrease`, at most once per window: only a permit
      granted after the last decrease can decrease again. Calls in flight together see the
      same congestion, so a burst of 429s from them halves the limit once, not once per
      call. Windows are counted in decreases, not clock time, so equal timestamps (coarse
      or fake clocks) cannot make the rule ambiguous.
    - `error` is neutral.
    - Delay (with ``delay``): an `ok` whose first token came late against the fastest seen
      (`DelayGradient`) counts as `overload`: a server that queues (llama.cpp, vLLM never
      answer 429) is found at its real parallelism before any call times out.
    - Slow start (TCP's): until the first overload each `ok` adds a whole `increase`, so
      the limit doubles every window and a swarm finds a large capacity in a few round
      trips instead of hundreds.
    - Upstream quota (`hold_until`): an upstream that says its remaining requests or
      tokens are spent holds new permits until its reset, before it has to answer 429.

    The limit stays within [minimum, maximum]; `max(1, floor(limit))` calls may be in
    flight. Waiting goes through a FairLimiter whose capacity follows the limit, so the
    jobs sharing a model take turns (its fairness policy) while the limit adapts; a lower
    limit never interrupts calls in flight, it only withholds new permits.
    """

    def __init__(
        self,
        *,
        initial: float = 8,
        minimum: float = 1,
        maximum: float = 256,
        increase: float = 1.0,
        decrease: float = 0.5,
        slow_start: bool = True,
        delay: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``delay``: read queueing from the time to first token (`DelayGradient`)."""
        if not 0 < minimum <= initial <= maximum:
            raise ValueError("need 0 < minimum <= initial <= maximum")
        if increase <= 0:
            raise ValueError("increase must be > 0")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        self._limit = float(initial)
        self._minimum = float(minimum)
        self._maximum = float(maximum)
        self._increase = float(increase)
        self._decrease = float(decrease)
        self._clock = clock
        self._decreases = 0
        self._slow_start = slow_start
        # The limit when the last overload came (0: none yet), and how far the other
        # overloads of that window may lower it.
        self._ceiling = 0.0
        self._ceiling_floor = 0.0
        self._sleep = sleep
        # What the upstream last said is left of its quota: calls that may still start, and
        # until when that holds (None: nothing said, or said for a window now over).
        self._quota_calls: int | None = None
        self._quota_until = 0.0
        self._slots = FairLimiter(self.slots)
        # Permits whose call is really in flight; permits held while waiting for other
        # limits (global slots, rate buckets) do not count as using the window.
        self._active = 0
        self.delay = DelayGradient() if delay else None

    @property
    def limit(self) -> float:
        return self._limit

    @property
    def minimum(self) -> float:
        return self._minimum

    @property
    def maximum(self) -> float:
        return self._maximum

    @maximum.setter
    def maximum(self, value: float) -> None:
        if value < self._minimum:
            raise ValueError(f"maximum {value!r} is below minimum {self._minimum!r}")
        self._maximum = float(value)
        self._set_limit(min(self._limit, self._maximum))

    @property
    def slots(self) -> int:
        return max(1, math.floor(self._limit))

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    @property
    def decreases(self) -> int:
        return self._decreases

    @property
    def ceiling(self) -> float:
        """The limit at the last overload, which the limit returns to just below (0: none)."""
        return self._ceiling

    @property
    def in_slow_start(self) -> bool:
        """True until the first overload: the limit still doubles every window."""
        return self._slow_start

    def snapshot(self) -> AdaptiveSnapshot:
        return AdaptiveSnapshot(self.limit, self.in_flight, self.waiting, self.decreases)

    async def acquire(
        self, key: str = "", *, group: str | None = None, active: bool = True
    ) -> Permit:
        """Wait for a slot; `key` (the job) decides whose turn it is when several wait.

        With `active=False` the caller still has other limits to pass, and calls
        `activate(permit)` when its call really starts.
        """
        await self._slots.acquire(key, group)
        permit = Permit(granted_at=self._clock(), epoch=self._decreases, key=key)
        if active:
            self.activate(permit)
        return permit

    def activate(self, permit: Permit) -> None:
        """The permit's call is being made now. Only active calls show that the window is
        in use; without this, calls parked in a later limit would grow the limit forever."""
        if not permit.active and not permit._released:
            permit.active = True
            self._active += 1

    @property
    def active(self) -> int:
        return self._active

    def release(self, permit: Permit, outcome: Outcome) -> None:
        if permit._released:
            raise RuntimeError("permit released twice")
        permit._released = True
        busy = self._active  # counting this call, if it ran: the window while it ran
        if permit.active:
            self._active -= 1
        outcome = self.judged(permit, outcome)
        limit = self._limit
        if outcome is Outcome.ok:
            if busy * 2 >= self.slots:
                limit = grown(
                    limit, self._ceiling, slow_start=self._slow_start, increase=self._increase
                )
                limit = min(self._maximum, limit)
        elif outcome is Outcome.overload and permit.epoch == self._decreases:
            self._ceiling = limit
            self._ceiling_floor = limit * EXTRA_OVERLOAD_FLOOR
            limit = max(self._minimum, limit * self._decrease)
            self._decreases += 1
            self._slow_start = False
        elif outcome is Outcome.overload and permit.epoch == self._decreases - 1:
            # Another call of the window that overloaded: one slot too many each.
            self._ceiling = max(self._ceiling_floor, self._ceiling - 1)
            limit = min(limit, max(self._minimum, self._ceiling * self._decrease))
        # Capacity first, so the freed slot goes out under the new limit.
        self._set_limit(limit)
        self._slots.release(permit.key)

    def note_quota(self, calls_left: int, reset_s: float) -> None:
        """The upstream says ``calls_left`` more calls may start in the next ``reset_s``
        seconds (its `x-ratelimit-remaining-*` and `-reset-*` headers)."""
        self._quota_calls = max(0, calls_left)
        self._quota_until = self._clock() + max(0.0, reset_s)

    @property
    def quota_hold_s(self) -> float:
        """Seconds new calls are held because the upstream's quota is spent (0: none)."""
        if self._quota_calls is None or self._quota_calls > 0:
            return 0.0
        return max(0.0, self._quota_until - self._clock())

    async def within_quota(self) -> None:
        """Wait, holding the permit, while the upstream's stated quota is spent, then count
        this call against it: calls are held until the upstream's reset instead of being
        sent to be answered 429."""
        while self._quota_calls is not None:
            if self._clock() >= self._quota_until:
                self._quota_calls = None  # the upstream's window is over: nothing known
                break
            if self._quota_calls > 0:
                self._quota_calls -= 1
                break
            await self._sleep(self._quota_until - self._clock())

    def judged(self, permit: Permit, outcome: Outcome) -> Outcome:
        """``outcome``, or `overload` for a success whose first token shows queueing."""
        queueing = (
            self.delay is not None
            and outcome is Outcome.ok
            and permit.first_token_s is not None
            and self.delay.observe(permit.first_token_s)
        )
        return Outcome.overload if queueing else outcome

    def slot(
        self, key: str = "", *, group: str | None = None, active: bool = True
    ) -> AbstractAsyncContextManager[Permit]:
        """`async with limiter.slot(job_id) as permit:` — set `permit.outcome` before leaving.

        If it is left unset the outcome is `ok` when the block exits normally and `error`
        (neutral) when an exception escapes, cancellation included: a call that failed in
        an unclassified way must neither grow nor shrink the limit. An explicit outcome
        always wins, so `permit.outcome = Outcome.overload; raise RateLimited()` works.
        """
        return _AdaptiveSlot(self, key, group, active)

    def _set_limit(self, limit: float) -> None:
        self._limit = limit
        if self._slots.capacity != self.slots:
            self._slots.capacity = self.slots


class _AdaptiveSlot:
    __slots__ = ("_active", "_group", "_key", "_limiter", "_permit")

    def __init__(self, limiter: AdaptiveLimiter, key: str, group: str | None, active: bool) -> None:
        self._limiter = limiter
        self._key = key
        self._group = group
        self._active = active
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        self._permit = await self._limiter.acquire(
            self._key, group=self._group, active=self._active
        )
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._permit
        assert permit is not None
        outcome = permit.outcome
        if outcome is None:
            outcome = Outcome.ok if exc_type is None else Outcome.error
        self._limiter.release(permit, outcome)
