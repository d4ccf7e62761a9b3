"""One job's event stream for a client: the stored events after its last seen `seq`, then
live ones, with no gap and no duplicate at the seam; closes after the terminal event."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from app.events.bus import EventBus, StoredEvent
from app.events.types import TERMINAL_JOB_EVENTS
from app.store import repository as repo
from app.store.models import JobStatus
from app.store.store import Store

# Events read from the database per query while replaying.
REPLAY_PAGE = 1000


def from_row(row: Any) -> StoredEvent:
    return StoredEvent(
        job_id=row.job_id,
        seq=row.seq,
        type=row.type,
        agent_id=row.agent_id,
        ts=row.ts,
        data=json.loads(row.data_json),
    )


class StreamClosed(Exception):
    """The subscriber fell too far behind and was cut off; it should reconnect."""


async def _page(store: Store, job_id: str, after: int, limit: int) -> list[Any]:
    return await store.read(
        functools.partial(repo.events_after, job_id=job_id, after=after, limit=limit)
    )


async def job_events(
    store: Store, bus: EventBus, job_id: str, after: int, *, max_seconds: float | None = None
) -> AsyncIterator[StoredEvent]:
    """Yield the job's events with seq > `after`, in order, until the terminal event.

    Subscribes before replaying, so an event committed while the replay runs arrives on
    the live queue; anything at or below the last replayed seq is dropped there.
    """
    sub = bus.subscribe(job_id)
    last = after
    loop = asyncio.get_running_loop()
    deadline = None if max_seconds is None else loop.time() + max_seconds
    try:
        while True:
            rows = await _page(store, job_id, last, REPLAY_PAGE)
            for row in rows:
                event = from_row(row)
                yield event
                last = event.seq
                if event.type in TERMINAL_JOB_EVENTS:
                    return
            if len(rows) < REPLAY_PAGE:
                break
        job, newest = await store.read(
            lambda c: (repo.get_job(c, job_id), repo.last_seq(c, job_id))
        )
        if job is None:
            return  # deleted
        if JobStatus(job.status).finished or last >= newest:
            # Finished (or the client is already past its end): whatever was committed
            # since the last page is in the database; send it, up to the terminal event.
            while rows := await _page(store, job_id, last, REPLAY_PAGE):
                for row in rows:
                    event = from_row(row)
                    yield event
                    last = event.seq
                    if event.type in TERMINAL_JOB_EVENTS:
                        return
            if JobStatus(job.status).finished:
                return
        while True:
            # The wait is bounded here, not around the yields: a time-out must never
            # fire while the consumer is busy sending.
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                return  # lifetime cap reached: the client reconnects with Last-Event-ID
            try:
                live = await asyncio.wait_for(sub.queue.get(), timeout)
            except TimeoutError:
                return
            if live is None:
                raise StreamClosed
            if live.seq <= last:
                if live.type in TERMINAL_JOB_EVENTS:
                    return  # the client resumed past the end: nothing more will come
                continue
            if live.seq > last + 1:
                # Never expected (we subscribed first), but a gap must not pass silently.
                rows = await _page(store, job_id, last, live.seq - last - 1)
                for row in rows:
                    yield from_row(row)
            yield live
            last = live.seq
            if live.type in TERMINAL_JOB_EVENTS:
                return
    finally:
        sub.close()
