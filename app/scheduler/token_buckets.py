"""Token buckets for the declared rpm/tpm limits of an upstream (`RateLimits`: one bucket
of requests, one of tokens, each holding a minute's worth). No I/O; time comes from an
injected clock."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

# The clock and the sleep every limit of the scheduler takes (fakes in tests).
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

__all__ = ["Clock", "RateLimits", "Sleep", "TokenBucket"]


class _Taker:
    __slots__ = ("gone", "need", "turn")

    def __init__(self, need: float, turn: asyncio.Future[None]) -> None:
        self.need = need
        self.turn = turn
        self.gone = False


class TokenBucket:
    """Token bucket refilled continuously at `rate_per_s` up to `capacity`; starts full.

    Takers wait in FIFO order and only the head of the queue sleeps, so a large request is
    not starved by a stream of small ones. A request larger than `capacity` could never be
    covered; it is let through when the bucket is full and leaves the level negative, the
    debt delaying later takers just as `adjust` charges do.
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        capacity: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate_per_s and capacity must be > 0")
        self._rate = float(rate_per_s)
        self._capacity = float(capacity)
        self._clock = clock
        self._sleep = sleep
        self._level = self._capacity
        self._stamp = clock()
        # Float refill arithmetic lands a hair short of the target after sleeping exactly
        # the computed delay; without slack a fake clock would spin on ever-tinier sleeps.
        self._slack = 1e-9 * self._capacity
        # Live takers at the front and in order; cancelled ones further back stay until
        # they reach the front (`gone`), so cancelling is O(1).
        self._queue: deque[_Taker] = deque()
        self._queued = 0.0
        self._waiting = 0

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    @property
    def waiting(self) -> int:
        return self._waiting

    def try_take(self, n: float = 1) -> float:
        """Take `n` now and return 0.0, or take nothing and return the seconds until `n`
        would be available. Queued takers come first: with a queue, this takes only what
        leaves their demand covered, and the wait is an estimate that includes it."""
        need = self._need(n)
        self._refill()
        ahead = self._queued + need
        if self._level + self._slack >= ahead:
            self._level -= n
            return 0.0
        return (ahead - self._level) / self._rate

    async def take(self, n: float = 1) -> None:
        if not self._queue and self.try_take(n) == 0.0:
            return
        need = self._need(n)
        me = _Taker(need, asyncio.get_running_loop().create_future())
        self._queue.append(me)
        self._queued += need
        self._waiting += 1
        try:
            if self._queue[0] is not me:
                await me.turn
            while True:
                self._refill()
                if self._level + self._slack >= need:
                    self._level -= n
                    return
                await self._sleep((need - self._level) / self._rate)
        finally:
            me.gone = True
            self._queued -= need
            self._waiting -= 1
            if self._queue and self._queue[0] is me:
                # Leaving the head (served, or cancelled even just as its turn came): the
                # turn passes to the next live taker.
                self._queue.popleft()
                self._next_turn()

    def adjust(self, delta: float) -> None:
        """Charge (`delta` > 0) or refund (`delta` < 0) tokens after the fact. Charges may
        leave the level negative; refunds are capped at `capacity`. A taker already
        sleeping notices a refund when it wakes, not earlier."""
        self._refill()
        self._level = min(self._capacity, self._level - delta)

    def _need(self, n: float) -> float:
        if n < 0:
            raise ValueError(f"cannot take a negative amount ({n!r})")
        return min(n, self._capacity)

    def _refill(self) -> None:
        now = self._clock()
        if now > self._stamp:
            self._level = min(self._capacity, self._level + (now - self._stamp) * self._rate)
            self._stamp = now

    def _next_turn(self) -> None:
        queue = self._queue
        while queue and queue[0].gone:
            queue.popleft()
        if queue:
            turn = queue[0].turn
            if not turn.done():
                turn.set_result(None)
        else:
            self._queued = 0.0  # drop accumulated float drift


class RateLimits:
    """Declared per-minute limits of one upstream: requests (rpm) and tokens (tpm), each a
    bucket holding one minute's worth. None means no limit of that kind.

    Call `admit(estimate)` before a request and `settle(estimate, actual)` after it (with
    actual 0 if it consumed nothing) so the token bucket reflects real usage.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.requests = _per_minute(rpm, clock, sleep)
        self.tokens = _per_minute(tpm, clock, sleep)

    async def admit(self, est_tokens: int) -> None:
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            try:
                await self.tokens.take(est_tokens)
            except BaseException:
                if self.requests is not None:
                    # Not admitted after all: the request token goes back.
                    self.requests.adjust(-1)
                raise

    def settle(self, est_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.adjust(actual_tokens - est_tokens)


def _per_minute(limit: int | None, clock: Clock, sleep: Sleep) -> TokenBucket | None:
    if limit is None:
        return None
    if limit <= 0:
        raise ValueError(f"per-minute limit must be > 0 or None, got {limit!r}")
    return TokenBucket(rate_per_s=limit / 60, capacity=limit, clock=clock, sleep=sleep)
