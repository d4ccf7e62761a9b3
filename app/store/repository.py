"""All SQL of the service: reads (run in worker threads) and write operations (run by the
single writer, see `writer.py`). Routes and the scheduler call these, never SQL directly."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.engine.lifecycle import FINISHED_JOB_STATUSES, AgentKind, AgentStatus, JobStatus
from app.events.types import EventType
from app.store.models import Agent, Event, Job, ModelLimit, utcnow
from app.store.transitions import cancel_unfinished_agents, mark_job_finished
from app.store.writer import Refused, Tx

jobs_t = Job.__table__  # type: ignore[attr-defined]
model_limits_t = ModelLimit.__table__  # type: ignore[attr-defined]
agents_t = Agent.__table__  # type: ignore[attr-defined]
events_t = Event.__table__  # type: ignore[attr-defined]


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobNotFoundError(Exception):
    pass


class JobStillRunningError(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


# -- write operations (executed inside the writer's transaction) ---------------------------


@dataclass(frozen=True)
class NewJob:
    row: dict[str, Any]
    agents: list[dict[str, Any]]


def new_job(
    *,
    job_id: str,
    tenant: str,
    name: str,
    model: str,
    agents: Sequence[tuple[str, str, Sequence[str]]],
    failure_policy: str = "skip_dependents",
    max_concurrency: int = 16,
    budget_usd: float | None = None,
    spec_json: str = "{}",
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    map_nodes: Collection[str] = (),
) -> NewJob:
    """The rows of a job just accepted: `agents` as (id, model, depends_on), in order;
    those in `map_nodes` are map nodes."""
    row = {
        "id": job_id,
        "tenant": tenant,
        "name": name,
        "status": JobStatus.queued,
        "model": model,
        "failure_policy": failure_policy,
        "max_concurrency": max_concurrency,
        "budget_usd": budget_usd,
        "spec_json": spec_json,
        "metadata_json": dumps(metadata or {}),
        "agents_total": len(agents),
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "created_at": utcnow(),
        "cancel_requested": False,
    }
    rows = [
        {
            "job_id": job_id,
            "agent_id": agent_id,
            "position": i,
            "status": AgentStatus.pending,
            "model": agent_model,
            "depends_on_json": dumps(list(depends_on)),
            "attempts": 0,
            "rate_limited": 0,
            "kind": AgentKind.map if agent_id in map_nodes else AgentKind.agent,
        }
        for i, (agent_id, agent_model, depends_on) in enumerate(agents)
    ]
    return NewJob(row=row, agents=rows)


class TooManyActiveJobsError(Exception):
    def __init__(self, active: int, limit: int) -> None:
        super().__init__(active, limit)
        self.active = active
        self.limit = limit


def find_idempotent(conn: Connection, tenant: str, key: str) -> Any:
    """The tenant's job submitted with this Idempotency-Key, if any (id, request_hash)."""
    return conn.execute(
        select(jobs_t.c.id, jobs_t.c.request_hash).where(
            jobs_t.c.tenant == tenant, jobs_t.c.idempotency_key == key
        )
    ).first()


def create_job(new: NewJob, *, max_active: int | None = None) -> Any:
    """Insert a job and its agents, or return the earlier job for a repeated idempotent
    submit. The tenant's active-job limit is checked here, in the writer, so parallel
    submits cannot all slip under it. Returns `(job_id, created)`.
    """

    def op(tx: Tx) -> tuple[str, bool] | Refused:
        key = new.row.get("idempotency_key")
        if key is not None:
            prior = find_idempotent(tx.conn, new.row["tenant"], key)
            if prior is not None:
                if prior.request_hash != new.row.get("request_hash"):
                    return Refused(IdempotencyConflictError(prior.id))
                return prior.id, False
        if max_active is not None:
            active = count_active_jobs(tx.conn, new.row["tenant"])
            if active >= max_active:
                return Refused(TooManyActiveJobsError(active, max_active))
        tx.conn.execute(insert(jobs_t), [new.row])
        if new.agents:
            tx.conn.execute(insert(agents_t), new.agents)
        job_id = new.row["id"]
        tx.emit(job_id, EventType.job_queued, agents=len(new.agents))
        return job_id, True

    return op


def end_unfinished_job(job_id: str, status: JobStatus, reason: str) -> Any:
    """End a job no run is driving: its unfinished agents `cancelled`, the job `status`.
    Does nothing to a job that has already finished (or is gone)."""

    def op(tx: Tx) -> bool:
        row = tx.conn.execute(select(jobs_t.c.status).where(jobs_t.c.id == job_id)).first()
        if row is None or row.status in FINISHED_JOB_STATUSES:
            return False
        cancel_unfinished_agents(job_id, reason)(tx)
        mark_job_finished(job_id, status, reason)(tx)
        return True

    return op


def _owned(job_id: str, tenant: str | None) -> Any:
    """WHERE clause for a job id, limited to the tenant's jobs when a tenant is given."""
    clause = jobs_t.c.id == job_id
    return clause if tenant is None else clause & (jobs_t.c.tenant == tenant)


def request_cancel(job_id: str, tenant: str | None = None) -> Any:
    """Flag the job for cancellation. Returns its status, or raises JobNotFoundError."""

    def op(tx: Tx) -> str | Refused:
        row = tx.conn.execute(select(jobs_t.c.status).where(_owned(job_id, tenant))).first()
        if row is None:
            return Refused(JobNotFoundError(job_id))
        if row.status not in FINISHED_JOB_STATUSES:
            tx.conn.execute(
                update(jobs_t).where(jobs_t.c.id == job_id).values(cancel_requested=True)
            )
        return str(row.status)

    return op


def delete_job(job_id: str, tenant: str | None = None) -> Any:
    def op(tx: Tx) -> Refused | None:
        row = tx.conn.execute(select(jobs_t.c.status).where(_owned(job_id, tenant))).first()
        if row is None:
            return Refused(JobNotFoundError(job_id))
        if row.status not in FINISHED_JOB_STATUSES:
            return Refused(JobStillRunningError(row.status))
        tx.conn.execute(delete(events_t).where(events_t.c.job_id == job_id))
        tx.conn.execute(delete(agents_t).where(agents_t.c.job_id == job_id))
        tx.conn.execute(delete(jobs_t).where(jobs_t.c.id == job_id))
        tx.forget_job(job_id)
        return None

    return op


@dataclass(frozen=True)
class LearnedLimit:
    limit: float
    slow_start: bool


# Saved limits older than this are never used; `timedelta` cannot go much further anyway.
_MAX_MEMORY_S = 10 * 365 * 86_400.0


def save_model_limits(
    limits: dict[str, LearnedLimit], *, forget_older_than_s: float | None = None
) -> Any:
    """Remember each model's learned concurrency limit (insert or replace), and forget
    the saved limits older than `forget_older_than_s`."""

    def op(tx: Tx) -> None:
        now = utcnow()
        if forget_older_than_s is not None and forget_older_than_s > 0:
            cutoff = now - timedelta(seconds=min(forget_older_than_s, _MAX_MEMORY_S))
            tx.conn.execute(delete(model_limits_t).where(model_limits_t.c.updated_at < cutoff))
        if not limits:
            return
        # One upsert (both dialects have INSERT … ON CONFLICT), so two replicas saving the
        # same model at once cannot collide.
        dialect = tx.conn.dialect.name
        upsert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = upsert(model_limits_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[model_limits_t.c.model],
            set_={
                "concurrency_limit": stmt.excluded.concurrency_limit,
                "slow_start": stmt.excluded.slow_start,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        tx.conn.execute(
            stmt,
            [
                {
                    "model": model,
                    "concurrency_limit": learned.limit,
                    "slow_start": learned.slow_start,
                    "updated_at": now,
                }
                for model, learned in limits.items()
            ],
        )

    return op


def load_model_limits(conn: Connection, *, max_age_s: float) -> dict[str, LearnedLimit]:
    """The limits learned within the last `max_age_s` seconds, by model."""
    since = utcnow() - timedelta(seconds=min(max_age_s, _MAX_MEMORY_S))
    rows = conn.execute(select(model_limits_t).where(model_limits_t.c.updated_at >= since)).all()
    return {r.model: LearnedLimit(float(r.concurrency_limit), bool(r.slow_start)) for r in rows}


# -- reads ---------------------------------------------------------------------------------


def get_job(conn: Connection, job_id: str, tenant: str | None = None) -> Any:
    """The job, or None when it does not exist or belongs to another tenant."""
    return conn.execute(select(jobs_t).where(_owned(job_id, tenant))).first()


def count_active_jobs(conn: Connection, tenant: str) -> int:
    return int(
        conn.execute(
            select(func.count()).where(
                jobs_t.c.tenant == tenant,
                jobs_t.c.status.in_((JobStatus.queued, JobStatus.running)),
            )
        ).scalar_one()
    )


def list_jobs(
    conn: Connection, *, tenant: str, status: str | None, limit: int, before: str | None
) -> list[Any]:
    cols = [c for c in jobs_t.c if c.name != "spec_json"]
    q = select(*cols).where(jobs_t.c.tenant == tenant)
    if status is not None:
        q = q.where(jobs_t.c.status == status)
    if before is not None:
        q = q.where(jobs_t.c.id < before)
    return list(conn.execute(q.order_by(jobs_t.c.id.desc()).limit(limit)).all())


@dataclass(frozen=True)
class JobTotals:
    counts: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    cost_complete: bool


def job_totals(conn: Connection, job_id: str) -> JobTotals:
    rows = conn.execute(
        select(
            agents_t.c.status,
            func.count(),
            func.coalesce(func.sum(agents_t.c.prompt_tokens), 0),
            func.coalesce(func.sum(agents_t.c.completion_tokens), 0),
            func.coalesce(func.sum(agents_t.c.total_tokens), 0),
            func.sum(agents_t.c.cost_usd),
            func.count(agents_t.c.cost_usd),
            func.count(agents_t.c.total_tokens),
        )
        .where(agents_t.c.job_id == job_id)
        .group_by(agents_t.c.status)
    ).all()
    counts = {str(s): 0 for s in AgentStatus}
    pt = ct = tt = 0
    cost: float | None = None
    priced = with_usage = 0
    for status, n, p, c, t, cost_sum, n_priced, n_usage in rows:
        counts[str(status)] = int(n)
        pt += int(p)
        ct += int(c)
        tt += int(t)
        if cost_sum is not None:
            cost = (cost or 0.0) + float(cost_sum)
        priced += int(n_priced)
        with_usage += int(n_usage)
    return JobTotals(
        counts=counts,
        prompt_tokens=pt,
        completion_tokens=ct,
        total_tokens=tt,
        cost_usd=cost,
        cost_complete=priced == with_usage,
    )


_SUMMARY_COLS = (
    agents_t.c.agent_id,
    agents_t.c.kind,
    agents_t.c.parent_id,
    agents_t.c.status,
    agents_t.c.model,
    agents_t.c.depends_on_json,
    agents_t.c.attempts,
    agents_t.c.total_tokens,
    agents_t.c.cost_usd,
    agents_t.c.latency_ms,
    agents_t.c.last_error,
)


# Submission order, each map node's items and each reducer's merge steps right after it.
_AGENT_ORDER = (agents_t.c.position, func.coalesce(agents_t.c.sub_index, -1))


def agent_summaries(conn: Connection, job_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(*_SUMMARY_COLS).where(agents_t.c.job_id == job_id).order_by(*_AGENT_ORDER)
        ).all()
    )


def list_agents(
    conn: Connection,
    job_id: str,
    *,
    status: str | None = None,
    kind: str | None = None,
    parent: str | None = None,
    limit: int,
    after: tuple[int, int] | None = None,
) -> list[Any]:
    """A page of the job's agents in listing order, filtered; `after` is the (position,
    sub_index) of the last row of the previous page."""
    order = func.coalesce(agents_t.c.sub_index, -1)
    q = select(*_SUMMARY_COLS, agents_t.c.position, order.label("sub_order")).where(
        agents_t.c.job_id == job_id
    )
    if status is not None:
        q = q.where(agents_t.c.status == status)
    if kind is not None:
        q = q.where(agents_t.c.kind == kind)
    if parent is not None:
        q = q.where(agents_t.c.parent_id == parent)
    if after is not None:
        position, sub = after
        q = q.where(
            (agents_t.c.position > position) | ((agents_t.c.position == position) & (order > sub))
        )
    return list(conn.execute(q.order_by(*_AGENT_ORDER).limit(limit)).all())


def get_agent(conn: Connection, job_id: str, agent_id: str) -> Any:
    return conn.execute(
        select(agents_t).where(agents_t.c.job_id == job_id, agents_t.c.agent_id == agent_id)
    ).first()


def completed_outputs(conn: Connection, job_id: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        select(agents_t.c.agent_id, agents_t.c.output)
        .where(agents_t.c.job_id == job_id, agents_t.c.status == AgentStatus.completed)
        .order_by(*_AGENT_ORDER)
    ).all()
    return [(r.agent_id, r.output or "") for r in rows]


def unfinished_job_ids(conn: Connection) -> list[str]:
    rows = conn.execute(
        select(jobs_t.c.id)
        .where(jobs_t.c.status.in_([JobStatus.queued, JobStatus.running]))
        .order_by(jobs_t.c.id)
    ).all()
    return [r.id for r in rows]


@dataclass(frozen=True)
class CallStats:
    attempts: int  # calls made, all agents
    agents_called: int  # agents with at least one call
    rate_limited: int  # attempts answered with 429
    latencies_ms: list[float]  # the successful call of each completed agent


def call_stats(conn: Connection, job_id: str) -> CallStats:
    row = conn.execute(
        select(
            func.coalesce(func.sum(agents_t.c.attempts), 0),
            func.count().filter(agents_t.c.attempts > 0),
            func.coalesce(func.sum(agents_t.c.rate_limited), 0),
        ).where(agents_t.c.job_id == job_id)
    ).one()
    latencies = conn.execute(
        select(agents_t.c.latency_ms).where(
            agents_t.c.job_id == job_id, agents_t.c.latency_ms.is_not(None)
        )
    ).scalars()
    return CallStats(int(row[0]), int(row[1]), int(row[2]), [float(x) for x in latencies])


def job_counts_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(jobs_t.c.status, func.count()).group_by(jobs_t.c.status)).all()
    return {str(r[0]): int(r[1]) for r in rows}


def last_seq(conn: Connection, job_id: str) -> int:
    """The job's latest event sequence number (0 before any)."""
    return int(
        conn.execute(
            select(func.coalesce(func.max(events_t.c.seq), 0)).where(events_t.c.job_id == job_id)
        ).scalar_one()
    )


def agent_retries(conn: Connection, job_id: str, agent_id: str) -> list[dict[str, Any]]:
    """The agent's failed attempts that were retried: attempt, reason, error, delay, time."""
    rows = conn.execute(
        select(events_t.c.ts, events_t.c.data_json)
        .where(
            events_t.c.job_id == job_id,
            events_t.c.agent_id == agent_id,
            events_t.c.type == EventType.agent_retrying,
        )
        .order_by(events_t.c.seq)
    ).all()
    return [{**json.loads(r.data_json), "ts": r.ts} for r in rows]


def events_after(conn: Connection, job_id: str, after: int, limit: int = 1000) -> list[Any]:
    return list(
        conn.execute(
            select(events_t)
            .where(events_t.c.job_id == job_id, events_t.c.seq > after)
            .order_by(events_t.c.seq)
            .limit(limit)
        ).all()
    )


def loads(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
