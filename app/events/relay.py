"""Events committed by other replicas, handed to this process's subscribers (SWARM_ROLE=api).

Each writer announces its committed batches (`swarm_events`: per job the first and last
seq). For the jobs someone follows here, the relay reads those events from the events
table — the record, so a live reader and a replay see the same thing — and delivers them
to the bus. A stream drops what it already has and fills any gap from the table, so a lost
notification costs latency, never an event: after a reconnection, and every few seconds,
the relay also checks the followed jobs' latest seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from app.events.bus import EventBus, StoredEvent

log = logging.getLogger(__name__)

# The safety net's period: how late an event can be when its notification was lost.
CATCH_UP_S = 2.0

ReadAfter = Callable[[str, int, int], Awaitable[list[StoredEvent]]]
NewestSeqs = Callable[[list[str]], Awaitable[dict[str, int]]]


class EventRelay:
    def __init__(
        self,
        bus: EventBus,
        *,
        sender: str,
        read_after: ReadAfter,
        newest_seqs: NewestSeqs,
        catch_up_s: float = CATCH_UP_S,
    ) -> None:
        self._bus = bus
        self._sender = sender
        self._read_after = read_after
        self._newest_seqs = newest_seqs
        self._catch_up_s = catch_up_s
        # Per job: the seq range announced and not read yet (None: check the newest seq).
        self._pending: dict[str, tuple[int, int] | None] = {}
        # Per followed job: the last seq delivered.
        self._relayed: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0

    def on_notification(self, payload: str) -> None:
        try:
            body = json.loads(payload)
            if body.get("s") == self._sender:
                return  # our own batch: already on the bus
            spans = {str(j): (int(s[0]), int(s[1])) for j, s in body.get("j", {}).items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            log.warning("an events notification could not be read", extra={"payload": payload})
            return
        for job_id, (lo, hi) in spans.items():
            if not self._bus.has_subscribers(job_id):
                continue
            prior = self._pending.get(job_id)
            if prior is None and job_id in self._pending:
                self._pending[job_id] = (hi, hi)  # a check was due: read from the newest
            elif prior is None:
                self._pending[job_id] = (lo, hi)
            else:
                self._pending[job_id] = (min(prior[0], lo), max(prior[1], hi))
        if self._pending:
            self._wake.set()

    def catch_up(self) -> None:
        """Check every followed job's newest seq (after a reconnection: notifications were
        lost meanwhile)."""
        for job_id in self._bus.subscribed_jobs():
            self._pending.setdefault(job_id, None)
        if self._pending:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-relay")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for (which on 3.11 can swallow a cancel).
                async with asyncio.timeout(self._catch_up_s):
                    await self._wake.wait()
            except TimeoutError:
                self.catch_up()
            self._wake.clear()
            try:
                await self._relay()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is away: the streams fill the gap once it is back.
                log.warning(
                    "relaying events failed; retrying",
                    extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"},
                )
                await asyncio.sleep(0.5)
                self.catch_up()

    async def _relay(self) -> None:
        pending, self._pending = self._pending, {}
        for job_id in list(self._relayed):
            if not self._bus.has_subscribers(job_id):
                del self._relayed[job_id]
        followed = {j: span for j, span in pending.items() if self._bus.has_subscribers(j)}
        unknown = [j for j, span in followed.items() if span is None]
        if unknown:
            newest = await self._newest_seqs(unknown)
            for job_id in unknown:
                seq = newest.get(job_id, 0)
                followed[job_id] = (seq, seq)
        for job_id, span in followed.items():
            assert span is not None
            lo, hi = span
            after = self._relayed.get(job_id, lo - 1)
            if hi <= after or hi <= 0:
                continue
            events = await self._read_after(job_id, after, hi)
            if events:
                self._relayed[job_id] = events[-1].seq
                self.delivered += len(events)
                self._bus.deliver(events)
