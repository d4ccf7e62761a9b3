"""PostgreSQL notifications between replicas: one LISTEN connection per process that
reconnects by itself, `pg_notify` inside the writer's transaction (delivered only if it
commits) or on its own, and the channels' names and payloads.

Channels: `swarm_jobs` (a job was submitted: workers claim), `swarm_cancel` (a job's
cancel was requested: the worker running it stops it), `swarm_events` (a batch of events
committed: API replicas read those of the jobs their streams follow).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable

import anyio.to_thread
import psycopg
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.engine import make_url

from app.events.bus import StoredEvent
from app.store.tables import events_t

log = logging.getLogger(__name__)

JOBS_CHANNEL = "swarm_jobs"
CANCEL_CHANNEL = "swarm_cancel"
EVENTS_CHANNEL = "swarm_events"

# PostgreSQL refuses payloads of 8000 bytes or more: a batch that touched many jobs is
# announced in several notifications.
MAX_PAYLOAD = 7000
# The listening connection: reconnect back-off, and how often an idle one is checked.
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0
IDLE_CHECK_S = 5.0

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def libpq_url(database_url: str) -> str:
    """The URL psycopg itself connects with (no SQLAlchemy driver name)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def notify_in(conn: Connection, channel: str, payload: str) -> None:
    """Send a notification as part of `conn`'s transaction (delivered at its commit)."""
    conn.execute(_NOTIFY, {"channel": channel, "payload": payload})


async def notify(engine: Engine, channel: str, payload: str) -> None:
    """Send a notification on its own."""

    def send() -> None:
        with engine.begin() as conn:
            notify_in(conn, channel, payload)

    await anyio.to_thread.run_sync(send)


def event_payloads(sender: str, events: Iterable[StoredEvent]) -> list[str]:
    """The `swarm_events` payloads of a committed batch: per job the first and last seq."""
    ranges: dict[str, list[int]] = {}
    for event in events:
        span = ranges.get(event.job_id)
        if span is None:
            ranges[event.job_id] = [event.seq, event.seq]
        else:
            span[0] = min(span[0], event.seq)
            span[1] = max(span[1], event.seq)
    payloads: list[str] = []
    chunk: dict[str, list[int]] = {}
    size = 0
    for job_id, span in ranges.items():
        entry = len(job_id) + 30
        if chunk and size + entry > MAX_PAYLOAD:
            payloads.append(json.dumps({"s": sender, "j": chunk}, separators=(",", ":")))
            chunk, size = {}, 0
        chunk[job_id] = span
        size += entry
    if chunk:
        payloads.append(json.dumps({"s": sender, "j": chunk}, separators=(",", ":")))
    return payloads


class PgListener:
    """LISTENs on the channels it has handlers for, over one connection of its own; after
    every (re)connection it calls `on_connect` hooks (notifications sent while it was
    away are lost: the hooks catch up from the tables)."""

    def __init__(self, database_url: str, name: str = "swarm") -> None:
        self._url = libpq_url(database_url)
        self._name = name
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.connections = 0

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        self._handlers[channel] = handler

    def on_connect(self, hook: Callable[[], None]) -> None:
        self._on_connect.append(hook)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.connected = False

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            before = self.connections
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "the database notification connection failed; reconnecting",
                    extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"},
                )
            self.connected = False
            if self.connections > before:
                delay = RECONNECT_MIN_S  # it had worked: retry soon
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=10,
            application_name=self._name,
        )
        async with conn:
            for channel in self._handlers:
                await conn.execute(f"LISTEN {channel}")  # names are our constants
            self.connected = True
            self.connections += 1
            if self.connections > 1:
                log.info("the database notification connection is back")
            for hook in self._on_connect:
                hook()
            while True:
                async for note in conn.notifies(timeout=IDLE_CHECK_S):
                    handler = self._handlers.get(note.channel)
                    if handler is not None:
                        try:
                            handler(note.payload)
                        except Exception:
                            log.exception("a notification handler failed")
                # Quiet for a while: make sure the connection is still alive.
                await conn.execute("SELECT 1")


def newest_seqs(conn: Connection, job_ids: list[str]) -> dict[str, int]:
    """The latest event seq of each of the jobs (those with events)."""
    rows = conn.execute(
        select(events_t.c.job_id, func.max(events_t.c.seq))
        .where(events_t.c.job_id.in_(job_ids))
        .group_by(events_t.c.job_id)
    ).all()
    return {str(r[0]): int(r[1]) for r in rows}
