"""Limits shared by every process that names one Redis (SWARM_REDIS_URL): slot pools held
as leases in sorted sets, the per-model AIMD limit in a hash, token buckets in hashes, each
changed by one Lua script (app/scheduler/redis_scripts.py) so that acquire and release are
atomic. With Redis unreachable every limit falls back to this process's share of it, and
returns to Redis when it is back.

The classes here subclass the in-process primitives of `app.scheduler.limits`: the parent
is the fallback, so a call granted locally is released locally whatever Redis does since.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import socket
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app.scheduler import redis_scripts
from app.scheduler.limits import (
    CONVEX,
    EXTRA_OVERLOAD_FLOOR,
    PROBE_WINDOWS,
    RETURN_SHARE,
    AdaptiveLimiter,
    Clock,
    FairLimiter,
    Outcome,
    Permit,
    RateLimits,
    TokenBucket,
)

log = logging.getLogger(__name__)

__all__ = [
    "SharedAdaptiveLimiter",
    "SharedFairLimiter",
    "SharedLimits",
    "SharedRateLimits",
    "SharedTokenBucket",
]

# What counts as "Redis is unreachable" (refused, reset, timed out, restarting).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
# A call that cannot get a slot asks Redis again after about this long (a release in this
# process wakes it at once): a slot freed by another process waits about this long, which
# must stay small beside a call (tens of ms to minutes). About 100 small scripts a second.
POLL_S = 0.01
# A process waiting for a pool keeps its place in the pool's queue while it asks again
# within this (ms); a process that stopped asking drops out of it after this.
WAITER_TTL_MS = 3_000
# While Redis is unreachable it is probed this often (s).
PROBE_S = 1.0
# One Redis command may take this long before Redis counts as unreachable: a limit check
# must never hold a call for long.
SOCKET_TIMEOUT_S = 1.0
# Closing waits this long at most for the commands still running in the background.
FLUSH_S = 10.0


class SharedLimits:
    """One process's link to the shared limits: the Redis client and scripts, this
    process's membership of its group (whose live count sizes the fallback share), the
    leases it holds (renewed every third of `lease_s`), and whether Redis is reachable."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "swarm:",
        lease_s: float = 10.0,
        group: str = "workers",
        fallback_workers: int = 1,
    ) -> None:
        self.redis: Redis = Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.prefix = prefix
        self.lease_ms = max(1000, int(lease_s * 1000))
        self.group = group
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Optimistic until the first command fails: the first call finds out.
        self.available = True
        # Processes of the group seen alive at the last heartbeat, this one included.
        self.live = max(1, fallback_workers)
        self.fallbacks = 0
        self._held: dict[tuple[str, str], set[str]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._closed = False
        # Weak: a limiter dropped with its model's gate must not be kept alive by this list.
        self._listeners: list[weakref.WeakMethod[Callable[[bool], None]]] = []
        r = self.redis
        self.acquire_script = r.register_script(redis_scripts.ACQUIRE)
        self.release_script = r.register_script(redis_scripts.RELEASE)
        self.activate_script = r.register_script(redis_scripts.ACTIVATE)
        self.renew_script = r.register_script(redis_scripts.RENEW)
        self.heartbeat_script = r.register_script(redis_scripts.HEARTBEAT)
        self.leave_script = r.register_script(redis_scripts.LEAVE)
        self.bucket_script = r.register_script(redis_scripts.BUCKET)
        self.unlock_script = r.register_script(redis_scripts.UNLOCK)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- lifecycle

    def ensure_started(self) -> None:
        """Start the heartbeat (it needs the running loop, so it starts on first use)."""
        if not self._closed and (self._beat is None or self._beat.done()):
            self._beat = asyncio.get_running_loop().create_task(self._heartbeat())

    async def close(self) -> None:
        self._closed = True
        if self._beat is not None:
            self._beat.cancel()
            # A command being cancelled may hold the task briefly; the loop ends anyway.
            await asyncio.wait({self._beat}, timeout=2)
        await self.flush()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def flush(self) -> None:
        """Wait for the releases and activations sent in the background (each command is
        bounded by the socket time-out; FLUSH_S bounds them all)."""
        deadline = asyncio.get_running_loop().time() + FLUSH_S
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.wait(list(self._tasks), timeout=left)

    async def command(
        self,
        command: Awaitable[Any],
        on_cancelled: Callable[[Any], None] | None = None,
    ) -> Any:
        """Await one Redis command without letting a cancel of the caller reach it.

        redis-py cancelled inside its connect (the HELLO on a new connection) can leave
        the cancelled caller waiting for ever on 3.11, and a command cancelled mid-reply
        throws its connection away. The command runs in its own task and ends on its own
        (the socket time-out bounds it); a cancelled caller leaves at once, and
        `on_cancelled(reply)` is given the reply the command got after it left.
        """
        task = asyncio.ensure_future(command)
        self._tasks.add(task)
        task.add_done_callback(self._command_done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if on_cancelled is not None:
                task.add_done_callback(functools.partial(_reply_to, on_cancelled))
            raise

    def _command_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller still there has it raised; else no one

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """`listener(available)` (a bound method) is called whenever Redis is lost or
        back, for as long as its object lives."""
        self._listeners = [ref for ref in self._listeners if ref() is not None]
        self._listeners.append(weakref.WeakMethod(listener))

    async def beat(self) -> None:
        """One heartbeat: this process is alive, the group's live count, held leases
        renewed. Raises what Redis raised."""
        live = await self.command(
            self.heartbeat_script(
                keys=[self.key("live", self.group)], args=[self.lease_ms, self.member]
            )
        )
        self.live = max(1, int(live))
        await self._renew()

    async def _heartbeat(self) -> None:
        while not self._closed:
            try:
                await self.beat()
                if not self.available:
                    self.mark_up()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.mark_down(exc)
            await asyncio.sleep(self.lease_ms / 3000 if self.available else PROBE_S)

    async def _renew(self) -> None:
        keys: list[str] = []
        args: list[Any] = [self.lease_ms]
        for (slots, active), members in self._held.items():
            if members:
                keys += [slots, active]
                args += [len(members), *members]
        if keys:
            await self.command(self.renew_script(keys=keys, args=args))

    def mark_down(self, exc: BaseException) -> None:
        if not self.available:
            return
        self.available = False
        self.fallbacks += 1
        log.warning(
            "Redis is unreachable (%s): the shared limits fall back to this process's "
            "share, 1/%d of each (processes alive when last seen); retrying every %.0f s",
            type(exc).__name__,
            self.live,
            PROBE_S,
        )
        self._notify(False)
        self.ensure_started()

    def mark_up(self) -> None:
        self.available = True
        log.info("Redis is reachable again: the limits are shared again")
        self._notify(True)

    def _notify(self, available: bool) -> None:
        for ref in list(self._listeners):
            listener = ref()
            if listener is not None:
                listener(available)

    # -- background commands

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except REDIS_ERRORS as exc:
            self.mark_down(exc)

    def hold(self, keys: tuple[str, str], member: str) -> None:
        self._held.setdefault(keys, set()).add(member)

    def unhold(self, keys: tuple[str, str], member: str) -> None:
        held = self._held.get(keys)
        if held is not None:
            held.discard(member)
            if not held:
                del self._held[keys]

    # -- a short lock (the per-tenant active-job check)

    def _locked_too_late(self, key: str, token: str, reply: Any) -> None:
        if reply:
            self.spawn(self.unlock_script(keys=[key], args=[token]))

    @contextlib.asynccontextmanager
    async def lock(
        self, name: str, *, hold_s: float = 10.0, wait_s: float = 10.0
    ) -> AsyncIterator[bool]:
        """Hold `name` across processes while the block runs; yields False (and runs the
        block unlocked) when Redis is unreachable or the lock is not had within `wait_s`."""
        key = self.key("lock", name)
        token = uuid.uuid4().hex
        had = False
        if self.available:
            deadline = asyncio.get_running_loop().time() + wait_s
            try:
                while not had:
                    had = bool(
                        await self.command(
                            self.redis.set(key, token, nx=True, px=int(hold_s * 1000)),
                            functools.partial(self._locked_too_late, key, token),
                        )
                    )
                    if had or asyncio.get_running_loop().time() >= deadline:
                        break
                    await asyncio.sleep(0.005 + random.random() * 0.01)
            except REDIS_ERRORS as exc:
                self.mark_down(exc)
        try:
            yield had
        finally:
            if had:
                self.spawn(self.unlock_script(keys=[key], args=[token]))


def _reply_to(callback: Callable[[Any], None], task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        callback(task.result())


class _SharedPool:
    """The slots of one shared limit. This process's callers take turns locally (a
    FairLimiter of one: the fair rotation between tenants and jobs picks who asks Redis
    next); processes take turns in Redis (a queue of the processes left waiting)."""

    def __init__(self, shared: SharedLimits, name: str) -> None:
        self.shared = shared
        key = shared.key
        self.slots = key(name, "slots")
        self.active = key(name, "active")
        self.state = key(name, "state")
        self.waitq = key(name, "waitq")
        self.waitexp = key(name, "waitexp")
        self.seq = key(name, "seq")
        self._keys = [self.slots, self.active, self.state, self.waitq, self.waitexp, self.seq]
        self.turn = FairLimiter(1)
        self.changed = asyncio.Event()
        self.in_flight = 0
        self.waiting = 0
        # The shared limit's state as last seen: limit, decreases, slow start.
        self.limit: float | None = None
        self.decreases = 0
        self.slow_start = True

    async def acquire(
        self, key: str, group: str | None, *, seed: float, seed_slow: bool, fixed: int
    ) -> str | None:
        """A slot's id, or None when Redis is unreachable (the caller falls back)."""
        shared = self.shared
        self.waiting += 1
        try:
            await self.turn.acquire(key, group)
        except BaseException:
            self.waiting -= 1
            raise
        try:
            while shared.available:
                member = uuid.uuid4().hex
                self.changed.clear()
                try:
                    got = await shared.command(
                        shared.acquire_script(
                            keys=self._keys,
                            args=[
                                shared.lease_ms,
                                member,
                                shared.member,
                                repr(float(seed)),
                                int(seed_slow),
                                fixed,
                                WAITER_TTL_MS,
                            ],
                        ),
                        functools.partial(self._granted_too_late, member),
                    )
                except REDIS_ERRORS as exc:
                    shared.mark_down(exc)
                    return None
                if not fixed:
                    self._observe(float(got[1]), int(got[2]), int(got[3]))
                if int(got[0]) == 1:
                    self.in_flight += 1
                    shared.hold((self.slots, self.active), member)
                    return member
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # lands as the event is set, and this loop would then poll for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S * (0.5 + random.random())):
                        await self.changed.wait()
            return None
        except BaseException:
            if self.waiting == 1 and shared.available:
                shared.spawn(
                    shared.leave_script(keys=[self.waitq, self.waitexp], args=[shared.member])
                )
            raise
        finally:
            self.waiting -= 1
            self.turn.release(key)

    def _granted_too_late(self, member: str, got: Any) -> None:
        """The reply to an ask whose caller was cancelled meanwhile: a slot it granted is
        freed now rather than when its lease runs out."""
        if int(got[0]) == 1:
            self.shared.spawn(
                self.shared.release_script(
                    keys=[self.slots, self.active, self.state],
                    args=[member, "error", -1, 0, 0, 0, 0, 1],
                )
            )

    def _observe(self, limit: float, decreases: int, slow: int) -> None:
        self.limit = limit
        self.decreases = decreases
        self.slow_start = slow == 1

    def activate(self, member: str) -> None:
        shared = self.shared
        shared.spawn(
            shared.activate_script(keys=[self.slots, self.active], args=[shared.lease_ms, member])
        )

    def release(self, member: str, args: list[Any]) -> None:
        self.in_flight -= 1
        self.shared.unhold((self.slots, self.active), member)
        self.shared.spawn(self._release(member, args))

    async def _release(self, member: str, args: list[Any]) -> None:
        try:
            got = await self.shared.release_script(
                keys=[self.slots, self.active, self.state], args=[member, *args]
            )
            if int(got[1]) >= 0 and args[6] == 0:
                self._observe(float(got[0]), int(got[1]), int(got[2]))
        finally:
            self.changed.set()


class SharedAdaptiveLimiter(AdaptiveLimiter):
    """One model's AIMD limit shared by every process: the learned value and the slots in
    use live in Redis, and an overload seen by any process shrinks the one limit. The
    parent class is the fallback, sized to this process's share while Redis is away."""

    def __init__(self, shared: SharedLimits, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared = shared
        self._pool = _SharedPool(shared, "model:" + name)
        self._pool.limit = self._limit
        self._pool.slow_start = self._slow_start
        shared.add_listener(self._redis_changed)
        if not shared.available:
            self._redis_changed(False)

    def _redis_changed(self, available: bool) -> None:
        if not available:
            full = self._pool.limit if self._pool.limit is not None else self._limit
            share = max(self._minimum, min(self._maximum, full / self._shared.live))
            self._set_limit(share)
            self._slow_start = False

    @property
    def limit(self) -> float:
        """The whole limit: the shared value, or (in fallback) this process's share times
        the processes alive, so what is saved and shown stays the whole."""
        if self._shared.available and self._pool.limit is not None:
            return self._pool.limit
        return min(self._maximum, self._limit * self._shared.live)

    @property
    def slots(self) -> int:
        return max(1, math.floor(self._limit))

    @property
    def in_flight(self) -> int:
        return self._pool.in_flight + self._slots.in_flight

    @property
    def waiting(self) -> int:
        return self._pool.waiting + self._slots.waiting

    @property
    def decreases(self) -> int:
        return self._pool.decreases if self._shared.available else self._decreases

    @property
    def in_slow_start(self) -> bool:
        return self._pool.slow_start if self._shared.available else self._slow_start

    async def acquire(
        self, key: str = "", *, group: str | None = None, active: bool = True
    ) -> Permit:
        self._shared.ensure_started()
        if self._shared.available:
            seed = self._pool.limit if self._pool.limit is not None else self._limit
            member = await self._pool.acquire(
                key, group, seed=seed, seed_slow=self._pool.slow_start, fixed=0
            )
            if member is not None:
                permit = Permit(
                    granted_at=self._clock(), epoch=self._pool.decreases, key=key, shared=member
                )
                if active:
                    self.activate(permit)
                return permit
        return await super().acquire(key, group=group, active=active)

    def activate(self, permit: Permit) -> None:
        if permit.shared is None:
            super().activate(permit)
        elif not permit.active and not permit._released:
            permit.active = True
            self._pool.activate(permit.shared)

    def note_quota(self, calls_left: int, reset_s: float) -> None:
        """Every process reads the same upstream quota from its own answers: each starts
        its share of the calls left, so that together they do not overrun it."""
        super().note_quota(calls_left // max(1, self._shared.live), reset_s)

    def release(self, permit: Permit, outcome: Outcome) -> None:
        if permit.shared is None:
            super().release(permit, outcome)
            return
        if permit._released:
            raise RuntimeError("permit released twice")
        permit._released = True
        outcome = self.judged(permit, outcome)
        self._pool.release(
            permit.shared,
            [
                str(outcome),
                permit.epoch,
                repr(self._increase),
                repr(self._decrease),
                repr(self._minimum),
                repr(self._maximum),
                0,
                repr(RETURN_SHARE),
                PROBE_WINDOWS,
                repr(CONVEX),
                repr(EXTRA_OVERLOAD_FLOOR),
            ],
        )


class SharedFairLimiter(FairLimiter):
    """A fixed number of slots (the global concurrency limit) shared by every process;
    fair between tenants and jobs within a process, and between processes. The parent
    class is the fallback, with this process's share of the slots."""

    def __init__(self, shared: SharedLimits, name: str, capacity: int) -> None:
        super().__init__(capacity)
        self._shared = shared
        self._full = capacity
        self._pool = _SharedPool(shared, name)
        self._held_by: dict[str, list[str]] = {}
        shared.add_listener(self._redis_changed)
        if not shared.available:
            self._redis_changed(False)

    def _redis_changed(self, available: bool) -> None:
        if not available:
            self.capacity = max(1, self._full // self._shared.live)

    @property
    def in_flight(self) -> int:
        return self._pool.in_flight + self._in_flight

    @property
    def waiting(self) -> int:
        return self._pool.waiting + self._waiting

    async def acquire(self, key: str, group: str | None = None) -> None:
        self._shared.ensure_started()
        if self._shared.available:
            member = await self._pool.acquire(key, group, seed=0, seed_slow=False, fixed=self._full)
            if member is not None:
                self._held_by.setdefault(key, []).append(member)
                return
        await super().acquire(key, group)

    def release(self, key: str) -> None:
        held = self._held_by.get(key)
        if not held:
            super().release(key)
            return
        member = held.pop()
        if not held:
            del self._held_by[key]
        self._pool.release(member, ["ok", 0, 0, 0, 0, 0, self._full])


class SharedTokenBucket(TokenBucket):
    """A token bucket kept in Redis (level and time stamp, refilled by Redis's clock),
    taken from by every process; FIFO within a process. The parent class is the fallback,
    refilled at this process's share of the rate."""

    def __init__(
        self,
        shared: SharedLimits,
        name: str,
        *,
        rate_per_s: float,
        capacity: float,
        clock: Clock | None = None,
    ) -> None:
        if clock is None:
            super().__init__(rate_per_s=rate_per_s, capacity=capacity)
        else:
            super().__init__(rate_per_s=rate_per_s, capacity=capacity, clock=clock)
        self._shared = shared
        self._key = shared.key("bucket", name)
        self._full = (float(rate_per_s), float(capacity))
        self._turn = asyncio.Lock()
        shared.add_listener(self._redis_changed)
        if not shared.available:
            self._redis_changed(False)

    def _redis_changed(self, available: bool) -> None:
        if not available:
            rate, capacity = self._full
            live = self._shared.live
            self._refill()
            self._rate = rate / live
            self._capacity = max(1.0, capacity / live)
            self._level = min(self._level, self._capacity)

    async def _shared_take(self, n: float, mode: str = "take") -> float:
        rate, capacity = self._full
        got = await self._shared.command(
            self._shared.bucket_script(
                keys=[self._key],
                args=[repr(rate), repr(capacity), repr(n), repr(min(n, capacity)), mode],
            )
        )
        return float(got)

    async def try_take_shared(self, n: float = 1) -> float:
        """Take `n` now and return 0.0, or return the seconds until it would be there."""
        if n < 0:
            raise ValueError(f"cannot take a negative amount ({n!r})")
        self._shared.ensure_started()
        if self._shared.available:
            try:
                return await self._shared_take(n)
            except REDIS_ERRORS as exc:
                self._shared.mark_down(exc)
        return self.try_take(n)

    async def take(self, n: float = 1) -> None:
        if n < 0:
            raise ValueError(f"cannot take a negative amount ({n!r})")
        self._shared.ensure_started()
        if self._shared.available:
            async with self._turn:
                while self._shared.available:
                    try:
                        wait = await self._shared_take(n)
                    except REDIS_ERRORS as exc:
                        self._shared.mark_down(exc)
                        break
                    if wait == 0:
                        return
                    await asyncio.sleep(min(wait, 1.0))
        await super().take(n)

    def adjust(self, delta: float) -> None:
        if self._shared.available:
            self._shared.spawn(self._shared_take(delta, "adjust"))
        else:
            super().adjust(delta)


class SharedRateLimits(RateLimits):
    """A model's declared rpm/tpm, as buckets shared by every process."""

    def __init__(self, shared: SharedLimits, name: str, rpm: int | None, tpm: int | None) -> None:
        self.requests = _shared_per_minute(shared, name + ":rpm", rpm)
        self.tokens = _shared_per_minute(shared, name + ":tpm", tpm)


def _shared_per_minute(
    shared: SharedLimits, name: str, limit: int | None
) -> SharedTokenBucket | None:
    if limit is None:
        return None
    if limit <= 0:
        raise ValueError(f"per-minute limit must be > 0 or None, got {limit!r}")
    return SharedTokenBucket(shared, name, rate_per_s=limit / 60, capacity=limit)
