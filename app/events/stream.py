"""One job's event stream for a client: the stored events after its last seen `seq`, then
live ones, with no gap and no duplicate at the seam; closes after the terminal event."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from app.engine.lifecycle import JobStatus
from app.events.bus import EventBus, StoredEvent
from app.events.types import TERMINAL_JOB_EVENTS
from app.store import repository as repo
from app.store.store import Store

# Events read from the database per query while replaying.
REPLAY_PAGE = 1000
# Live events a stream sends in one write at most (those already queued for it).
LIVE_BATCH = 500


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
    batches = job_event_batches(store, bus, job_id, after, max_seconds=max_seconds)
    try:
        async for batch in batches:
            for event in batch:
                yield event
    finally:
        await batches.aclose()


def _until_terminal(rows: list[Any]) -> tuple[list[StoredEvent], bool]:
    """The events of `rows` up to and including the first terminal one, and whether there
    was one."""
    events: list[StoredEvent] = []
    for row in rows:
        event = from_row(row)
        events.append(event)
        if event.type in TERMINAL_JOB_EVENTS:
            return events, True
    return events, False


async def job_event_batches(
    store: Store,
    bus: EventBus,
    job_id: str,
    after: int,
    *,
    max_seconds: float | None = None,
    max_batch: int = LIVE_BATCH,
) -> AsyncGenerator[list[StoredEvent], None]:
    """`job_events` in lists: a replay page at a time, and live events as many as are
    already queued (up to `max_batch`), so a stream that fell behind catches up in a few
    large writes instead of one write per event."""
    sub = bus.subscribe(job_id)
    last = after
    loop = asyncio.get_running_loop()
    deadline = None if max_seconds is None else loop.time() + max_seconds
    try:
        while True:
            rows = await _page(store, job_id, last, REPLAY_PAGE)
            batch, terminal = _until_terminal(rows)
            if batch:
                yield batch
                last = batch[-1].seq
            if terminal:
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
                batch, terminal = _until_terminal(rows)
                yield batch
                last = batch[-1].seq
                if terminal:
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
            batch = []
            while True:  # this event, then those already queued behind it
                if live is None:
                    if batch:
                        yield batch
                    raise StreamClosed
                if live.seq <= last:
                    if live.type in TERMINAL_JOB_EVENTS:
                        if batch:
                            yield batch
                        return  # the client resumed past the end: nothing more will come
                else:
                    if live.seq > last + 1:
                        # Never expected (we subscribed first), but a gap must not pass
                        # silently.
                        rows = await _page(store, job_id, last, live.seq - last - 1)
                        batch.extend(from_row(row) for row in rows)
                    batch.append(live)
                    last = live.seq
                    if live.type in TERMINAL_JOB_EVENTS:
                        yield batch
                        return
                if len(batch) >= max_batch or sub.queue.empty():
                    break
                live = sub.queue.get_nowait()
            if batch:
                yield batch
    finally:
        sub.close()
