"""Reads for reuse across jobs: the newest completed call of a tenant with a request's
fingerprint (app/engine/fingerprint.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from app.engine.lifecycle import AgentStatus
from app.store.tables import agents_t, jobs_t


@dataclass(frozen=True)
class ReusableAnswer:
    """A completed call whose output a request with the same fingerprint may take."""

    job_id: str
    agent_id: str
    output: str
    finish_reason: str | None
    cost_usd: float | None  # what the call cost: what reusing it saves


def find_reusable(
    conn: Connection, *, tenant: str, fingerprint: str, not_before: datetime | None
) -> ReusableAnswer | None:
    """Only answers that came from a call count (never a reused copy, whose age would be
    its reuse's), only the tenant's own, and only those finished at or after `not_before`.
    A deleted job's agents are gone, so its answers are no longer found."""
    query = (
        select(
            agents_t.c.job_id,
            agents_t.c.agent_id,
            agents_t.c.output,
            agents_t.c.finish_reason,
            agents_t.c.cost_usd,
        )
        .join(jobs_t, jobs_t.c.id == agents_t.c.job_id)
        .where(
            agents_t.c.fingerprint == fingerprint,
            agents_t.c.status == AgentStatus.completed,
            agents_t.c.reused_from_job_id.is_(None),
            agents_t.c.output.is_not(None),
            jobs_t.c.tenant == tenant,
        )
        .order_by(agents_t.c.finished_at.desc())
        .limit(1)
    )
    if not_before is not None:
        query = query.where(agents_t.c.finished_at >= not_before)
    row = conn.execute(query).first()
    if row is None:
        return None
    return ReusableAnswer(
        job_id=row.job_id,
        agent_id=row.agent_id,
        output=row.output,
        finish_reason=row.finish_reason,
        cost_usd=row.cost_usd,
    )
