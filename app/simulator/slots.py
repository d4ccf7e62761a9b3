"""The slots of a local server (llama.cpp's `-np`, vLLM's running sequences): requests past
them wait in arrival order rather than being refused."""

from __future__ import annotations

import asyncio
from collections import deque


class SlotQueue:
    """A first-come, first-served gate of a changeable number of slots."""

    def __init__(self) -> None:
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self, slots: int) -> None:
        if self.busy < slots and not self.queued:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(slots)  # handed a slot just as the client gave up
            raise

    def release(self, slots: int) -> None:
        self.busy -= 1
        while self._waiters and self.busy < slots:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)
