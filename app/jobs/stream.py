"""A job's event stream over Server-Sent Events: the stored events after the client's last
seen `seq`, then live ones, with no gap and no duplicate at the seam; closes after the
terminal event."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import ServicesDep
from app.errors import UnprocessableError
from app.events.bus import EventBus, StoredEvent
from app.events.deltas import DeltaEvent
from app.events.types import TERMINAL_JOB_EVENTS
from app.events.window import EventWindows
from app.store import events as event_store
from app.store import jobs as job_store
from app.store.store import Store

# Sequence numbers are stored as SQL integers: a resume point beyond them is nonsense.
MAX_SEQ = 2**62

router = APIRouter(tags=["events"], responses=AUTH_RESPONSES)

_STREAM_DOC = """Every state change of the job, in order, as Server-Sent Events:

```
id: 17
event: agent.completed
data: {"seq": 17, "type": "agent.completed", "job_id": "…", "agent_id": "summary", …}
```

`id` is the job's gap-free `seq`. Reconnect with `Last-Event-ID: N` (or `?after=N`) to get
exactly the events after N, then live ones. Comment lines (`: ping`) keep idle streams
open. Agents with `stream: true` also send `agent.delta` events (`agent_id`, `attempt`,
`index`, `text`: the answer's pieces as they arrive, at most about 20 a second per agent);
they have no `id`, are not stored and are not replayed: a stream resumed from
Last-Event-ID returns the stored events only, and `agent.completed` holds the whole
answer. The stream closes after the terminal `job.completed`, `job.failed` or
`job.cancelled`; on a finished job it replays and closes. A client that falls too far
behind is disconnected and resumes from its last id without losing anything."""


# Encoded events, shared by every stream of a job: 500 readers of one job would otherwise
# serialise each event 500 times. (job id, seq) names one event for good: stored events
# never change and job ids are never reused. Oldest entries go first.
ENCODED_CACHE_SIZE = 20_000
_encoded: OrderedDict[tuple[str, int], bytes] = OrderedDict()


def _encode(event: StoredEvent) -> bytes:
    key = (event.job_id, event.seq)
    data = _encoded.get(key)
    if data is None:
        data = ServerSentEvent(
            data=json.dumps(event.payload(), ensure_ascii=False, separators=(",", ":")),
            event=event.type,
            id=str(event.seq),
        ).encode()
        _encoded[key] = data
        if len(_encoded) > ENCODED_CACHE_SIZE:
            _encoded.popitem(last=False)
    return data


def _encode_any(event: StoredEvent | DeltaEvent) -> bytes:
    if isinstance(event, StoredEvent):
        return _encode(event)
    # No id: a delta is not a point to resume from (the reader's Last-Event-ID stays).
    return ServerSentEvent(
        data=json.dumps(event.payload(), ensure_ascii=False, separators=(",", ":")),
        event=event.type,
    ).encode()


@router.get(
    "/jobs/{job_id}/events",
    description=_STREAM_DOC,
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
        404: {"description": "No such job."},
        422: {"description": "Last-Event-ID or after is not a non-negative integer."},
    },
)
async def stream_events(
    job_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Resume after this seq.")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> EventSourceResponse:
    start = after or 0
    if last_event_id is not None and last_event_id.strip():
        try:
            start = int(last_event_id)
        except ValueError:
            raise UnprocessableError("Last-Event-ID must be an event id (an integer)") from None
        if not 0 <= start <= MAX_SEQ:
            raise UnprocessableError(f"Last-Event-ID must be between 0 and {MAX_SEQ}")
    await services.jobs.require(tenant, job_id)
    settings = services.settings

    async def body() -> AsyncIterator[bytes]:
        services.metrics.sse_streams.inc()
        try:
            # One write per batch: what is already queued for this reader goes out at
            # once. A write per event per reader (each a trip through the ASGI stack and a
            # send(2)) is what limited 500 readers of one job (bench/run.py api_load).
            async for batch in job_event_batches(
                services.store,
                services.bus,
                job_id,
                start,
                max_seconds=settings.sse_max_stream_s,
                deltas=True,
                windows=services.event_windows,
                linger_s=SSE_LINGER_S,
            ):
                yield b"".join(_encode_any(event) for event in batch)
        except StreamClosed:
            return
        finally:
            services.metrics.sse_streams.dec()

    # A reader that stops reading is dropped after `send_timeout`, so it cannot hold its
    # stream (and the server's resources) for ever.
    return EventSourceResponse(body(), ping=settings.sse_heartbeat_s, send_timeout=30)


# Events read from the database per query while replaying.
REPLAY_PAGE = 1000
# Live events a stream sends in one write at most (those already queued for it).
LIVE_BATCH = 500
# An SSE stream writes at most this often (s): what comes meanwhile goes in the next write.
# 500 readers of a busy job would otherwise each write once per event, and those writes,
# not the events, are what saturate the process; the cost is at most this much more lag.
SSE_LINGER_S = 0.05


class StreamClosed(Exception):
    """The subscriber fell too far behind and was cut off; it should reconnect."""


async def _page(
    store: Store, job_id: str, after: int, limit: int, windows: EventWindows | None = None
) -> list[StoredEvent]:
    """The job's stored events with seq > `after`, at most `limit`: what the window holds,
    then the rest from the table (kept in the window for the next reader)."""
    held = windows.after(job_id, after, limit) if windows is not None else []
    if len(held) == limit:
        return held
    since = held[-1].seq if held else after
    rows = await store.read(
        functools.partial(
            event_store.events_after, job_id=job_id, after=since, limit=limit - len(held)
        )
    )
    if windows is not None:
        windows.add(job_id, rows)
    return held + rows if held else rows


async def job_events(
    store: Store,
    bus: EventBus,
    job_id: str,
    after: int,
    *,
    max_seconds: float | None = None,
    windows: EventWindows | None = None,
) -> AsyncIterator[StoredEvent]:
    """Yield the job's events with seq > `after`, in order, until the terminal event.

    Subscribes before replaying, so an event committed while the replay runs arrives on
    the live queue; anything at or below the last replayed seq is dropped there.
    """
    batches = job_event_batches(store, bus, job_id, after, max_seconds=max_seconds, windows=windows)
    try:
        async for batch in batches:
            for event in batch:
                if isinstance(event, StoredEvent):
                    yield event
    finally:
        await batches.aclose()


def _until_terminal(rows: list[StoredEvent]) -> tuple[list[StoredEvent], bool]:
    """The events of `rows` up to and including the first terminal one that ends them, and
    whether there was one. A terminal event followed by more (a retry's `job.retried`)
    ended a run, not the job's stream."""
    for i, event in enumerate(rows):
        if event.type in TERMINAL_JOB_EVENTS and i == len(rows) - 1:
            return rows[: i + 1], True
    return rows, False


def _keep(
    windows: EventWindows | None, job_id: str, out: list[StoredEvent | DeltaEvent], last: int
) -> None:
    """Keep the live events of `out` (up to seq `last`) in the job's window, unless another
    reader already did: one reader of the 500 does it, the others pay one lookup."""
    if windows is not None and windows.newest(job_id) < last:
        windows.add(job_id, [e for e in out if isinstance(e, StoredEvent)])


async def job_event_batches(
    store: Store,
    bus: EventBus,
    job_id: str,
    after: int,
    *,
    max_seconds: float | None = None,
    max_batch: int = LIVE_BATCH,
    deltas: bool = False,
    windows: EventWindows | None = None,
    linger_s: float = 0.0,
) -> AsyncGenerator[Sequence[StoredEvent | DeltaEvent], None]:
    """`job_events` in lists: a replay page at a time, and live events as many as are
    already queued (up to `max_batch`), so a stream that fell behind catches up in a few
    large writes instead of one write per event. ``deltas``: the live `agent.delta`
    events too, in the order they came among the stored ones. ``windows``: replay from
    (and keep live events in) the readers' shared windows. ``linger_s``: live batches
    are at least this far apart (the first event of a batch waits for those behind it),
    unless a full batch is already queued or the job ended."""
    sub = bus.subscribe(job_id, deltas=deltas)
    last = after
    loop = asyncio.get_running_loop()
    deadline = None if max_seconds is None else loop.time() + max_seconds
    sent_at = -linger_s  # when this stream last wrote
    try:
        while True:
            rows = await _page(store, job_id, last, REPLAY_PAGE, windows)
            batch, terminal = _until_terminal(rows)
            if batch:
                yield batch
                sent_at = loop.time()
                last = batch[-1].seq
            if terminal and last >= await store.read(lambda c: event_store.last_seq(c, job_id)):
                return
            if len(rows) < REPLAY_PAGE and not terminal:
                break
        job, newest = await store.read(
            lambda c: (job_store.job_record(c, job_id), event_store.last_seq(c, job_id))
        )
        if job is None:
            return  # deleted
        if job.status.finished or last >= newest:
            # Finished (or the client is already past its end): whatever was committed
            # since the last page is in the database; send it, up to the terminal event.
            while rows := await _page(store, job_id, last, REPLAY_PAGE, windows):
                batch, terminal = _until_terminal(rows)
                yield batch
                sent_at = loop.time()
                last = batch[-1].seq
                if terminal:
                    return
            if job.status.finished:
                return
        while True:
            # The wait is bounded here, not around the yields: a time-out must never
            # fire while the consumer is busy sending.
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                return  # lifetime cap reached: the client reconnects with Last-Event-ID
            try:
                # asyncio.timeout, not wait_for (which on 3.11 can lose an item or a cancel).
                async with asyncio.timeout(timeout):
                    live = await sub.queue.get()
            except TimeoutError:
                return
            if linger_s > 0 and live is not None and live.type not in TERMINAL_JOB_EVENTS:
                pause = sent_at + linger_s - loop.time()
                if pause > 0 and sub.queue.qsize() < max_batch:
                    await asyncio.sleep(pause)
            out: list[StoredEvent | DeltaEvent] = []
            while True:  # this event, then those already queued behind it
                if live is None:
                    if out:
                        yield out
                    raise StreamClosed
                if isinstance(live, DeltaEvent):
                    out.append(live)
                elif live.seq <= last:
                    if live.type in TERMINAL_JOB_EVENTS:
                        if out:
                            yield out
                        return  # the client resumed past the end: nothing more will come
                else:
                    if live.seq > last + 1:
                        # Never expected (we subscribed first), but a gap must not pass
                        # silently.
                        rows = await _page(store, job_id, last, live.seq - last - 1, windows)
                        out.extend(rows)
                    out.append(live)
                    last = live.seq
                    if live.type in TERMINAL_JOB_EVENTS:
                        _keep(windows, job_id, out, last)
                        yield out
                        return
                if len(out) >= max_batch or sub.queue.empty():
                    break
                live = sub.queue.get_nowait()
            if out:
                _keep(windows, job_id, out, last)
                yield out
                sent_at = loop.time()
    finally:
        sub.close()
