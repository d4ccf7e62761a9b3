"""In-process fan-out of committed events to live subscribers (SSE streams, tests).

Events reach the bus only after the transaction that stored them committed, so a
subscriber never sees what the database lacks.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.engine.money import round_usd_fields
from app.events.deltas import DeltaEvent


@dataclass(frozen=True, slots=True)
class StoredEvent:
    job_id: str
    seq: int
    type: str
    agent_id: str | None
    ts: datetime
    data: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "seq": self.seq,
            "type": self.type,
            "job_id": self.job_id,
            "ts": self.ts.isoformat(),
        }
        if self.agent_id is not None:
            body["agent_id"] = self.agent_id
        # Dollars to a billionth, as in the API's fields (the stored event keeps the sum).
        body.update(round_usd_fields(self.data))
        return body


class Subscription:
    """One subscriber's bounded queue; when it overflows the subscriber is cut off."""

    def __init__(self, bus: EventBus, job_id: str, maxsize: int, deltas: bool = False) -> None:
        self._bus = bus
        self.job_id = job_id
        self.queue: asyncio.Queue[StoredEvent | DeltaEvent | None] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.deltas = deltas
        self._delta_room = maxsize // 2

    def offer_delta(self, event: DeltaEvent) -> None:
        """A delta is best-effort: dropped (never cutting the reader off) once the queue is
        half full, so that stored events always find room first."""
        if self.deltas and not self.overflowed and self.queue.qsize() < self._delta_room:
            self.queue.put_nowait(event)

    def offer(self, event: StoredEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A slow reader must never slow the scheduler: cut it off. What it had not
            # read yet is in the database; it resumes from its last seq (Last-Event-ID).
            self.cut_off()

    def cut_off(self) -> None:
        """End the subscriber's stream: it reads None next, and resumes from its last seq."""
        self.overflowed = True
        self._bus.unsubscribe(self)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, subscriber_queue_size: int = 1000) -> None:
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._queue_size = subscriber_queue_size
        # Called with every committed batch of events (metrics, the state-change log).
        self._listeners: list[Callable[[list[StoredEvent]], None]] = []
        self._closed = False

    def add_listener(self, listener: Callable[[list[StoredEvent]], None]) -> None:
        self._listeners.append(listener)

    def subscribe(self, job_id: str, *, deltas: bool = False) -> Subscription:
        """``deltas``: also receive the job's `agent.delta` events (not stored)."""
        sub = Subscription(self, job_id, self._queue_size, deltas)
        if self._closed:
            sub.cut_off()
            return sub
        self._subs[job_id].add(sub)
        return sub

    def close_subscribers(self) -> None:
        """Shutting down: end every live stream now, and any opened from now on, so that
        each ends cleanly (its client resumes elsewhere or after the restart)."""
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.cut_off()

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    def publish(self, events: list[StoredEvent]) -> None:
        """Hand committed events to the subscribers of their jobs (never blocks)."""
        for listener in self._listeners:
            listener(events)
        for event in events:
            for sub in tuple(self._subs.get(event.job_id, ())):
                sub.offer(event)

    def deliver(self, events: list[StoredEvent]) -> None:
        """Hand events committed by another replica to this process's subscribers (not to
        the listeners: metrics and the log are the writing replica's)."""
        for event in events:
            for sub in tuple(self._subs.get(event.job_id, ())):
                sub.offer(event)

    def publish_delta(self, event: DeltaEvent) -> None:
        """Hand a piece of a streamed answer to the job's live subscribers (never blocks)."""
        for sub in tuple(self._subs.get(event.job_id, ())):
            sub.offer_delta(event)

    def has_subscribers(self, job_id: str) -> bool:
        return bool(self._subs.get(job_id))

    def subscribed_jobs(self) -> list[str]:
        return [job_id for job_id, subs in self._subs.items() if subs]

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
