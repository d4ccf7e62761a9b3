"""The job's event stream over Server-Sent Events."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import ServicesDep
from app.api.jobs import JOB_NOT_FOUND
from app.errors import NotFoundError, UnprocessableError
from app.events.bus import StoredEvent
from app.events.stream import StreamClosed, job_event_batches
from app.store import repository as repo

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
open. The stream closes after the terminal `job.completed`, `job.failed` or
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
    if await services.store.read(lambda c: repo.get_job(c, job_id, tenant)) is None:
        raise NotFoundError(JOB_NOT_FOUND)
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
            ):
                yield b"".join(_encode(event) for event in batch)
        except StreamClosed:
            return
        finally:
            services.metrics.sse_streams.dec()

    # A reader that stops reading is dropped after `send_timeout`, so it cannot hold its
    # stream (and the server's resources) for ever.
    return EventSourceResponse(body(), ping=settings.sse_heartbeat_s, send_timeout=30)
