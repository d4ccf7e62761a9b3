"""Reads of the events table: a job's events after a seq, its latest seq, an agent's
retries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from app.events.bus import StoredEvent
from app.events.types import EventType
from app.store.tables import events_t


@dataclass(frozen=True)
class RetryRecord:
    """A failed attempt that was retried, as its `agent.retrying` event recorded it."""

    attempt: int
    reason: str
    error: str
    delay_s: float
    ts: datetime


def events_after(conn: Connection, job_id: str, after: int, limit: int = 1000) -> list[StoredEvent]:
    """The job's events with seq > `after`, in order, at most `limit`."""
    rows = conn.execute(
        select(events_t)
        .where(events_t.c.job_id == job_id, events_t.c.seq > after)
        .order_by(events_t.c.seq)
        .limit(limit)
    ).all()
    return [
        StoredEvent(
            job_id=r.job_id,
            seq=r.seq,
            type=r.type,
            agent_id=r.agent_id,
            ts=r.ts,
            data=json.loads(r.data_json),
        )
        for r in rows
    ]


def last_seq(conn: Connection, job_id: str) -> int:
    """The job's latest event sequence number (0 before any)."""
    return int(
        conn.execute(
            select(func.coalesce(func.max(events_t.c.seq), 0)).where(events_t.c.job_id == job_id)
        ).scalar_one()
    )


def agent_retries(conn: Connection, job_id: str, agent_id: str) -> list[RetryRecord]:
    """The agent's failed attempts that were retried, in order."""
    rows = conn.execute(
        select(events_t.c.ts, events_t.c.data_json)
        .where(
            events_t.c.job_id == job_id,
            events_t.c.agent_id == agent_id,
            events_t.c.type == EventType.agent_retrying,
        )
        .order_by(events_t.c.seq)
    ).all()
    retries = []
    for r in rows:
        data: dict[str, Any] = json.loads(r.data_json)
        retries.append(
            RetryRecord(
                attempt=int(data["attempt"]),
                reason=str(data["reason"]),
                error=str(data["error"]),
                delay_s=float(data["delay_s"]),
                ts=r.ts,
            )
        )
    return retries
