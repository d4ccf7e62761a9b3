"""The jobs table: accepting a job (with its agents), cancel and delete requests, ending a
job no run drives, and the reads of jobs and their totals."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from app.engine.lifecycle import FINISHED_JOB_STATUSES, AgentKind, AgentStatus, JobStatus
from app.engine.usage import Usage
from app.events.types import EventType
from app.store.models import utcnow
from app.store.steps import forget_transcripts
from app.store.tables import (
    agents_t,
    dumps,
    events_t,
    job_specs_t,
    job_totals_t,
    jobs_t,
    loads,
    owned,
    webhook_deliveries_t,
)
from app.store.totals import insert_agents
from app.store.transitions import cancel_unfinished_agents, mark_job_finished
from app.store.writer import Refused, Tx, WriteOp


class JobStoreError(Exception):
    """A job operation the store refused; nothing was written."""


class JobNotFoundError(JobStoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobStillRunningError(JobStoreError):
    def __init__(self, job_id: str, status: JobStatus) -> None:
        super().__init__(job_id, status)
        self.job_id = job_id
        self.status = status


class IdempotencyConflictError(JobStoreError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class TooManyActiveJobsError(JobStoreError):
    def __init__(self, active: int, limit: int) -> None:
        super().__init__(active, limit)
        self.active = active
        self.limit = limit


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """A job as listed: its columns with `metadata` decoded (no spec)."""

    id: str
    tenant: str
    name: str
    status: JobStatus
    model: str
    failure_policy: str
    max_concurrency: int
    budget_usd: float | None
    metadata: dict[str, Any]
    error: str | None
    agents_total: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        return cls(**_record_values(row))


@dataclass(frozen=True)
class StoredJob(JobRecord):
    """A job with the spec it was submitted with (what a run is restored from)."""

    spec_json: str

    @classmethod
    def from_row(cls, row: Any) -> StoredJob:
        return cls(**_record_values(row), spec_json=row.spec_json)


def _record_values(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "name": row.name,
        "status": JobStatus(row.status),
        "model": row.model,
        "failure_policy": row.failure_policy,
        "max_concurrency": row.max_concurrency,
        "budget_usd": row.budget_usd,
        "metadata": loads(row.metadata_json, {}),
        "error": row.error,
        "agents_total": row.agents_total,
        "cancel_requested": bool(row.cancel_requested),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }


@dataclass(frozen=True)
class PriorSubmit:
    """The job an Idempotency-Key was first used for, and the digest of that request."""

    id: str
    request_hash: str | None


@dataclass(frozen=True)
class JobTotals:
    """A job's agents counted by status, and what they used (tokens summed as 0 when none
    reported any; cost None when no agent has a price), estimates of attempts whose answer
    never arrived included (`usage.estimated_*` say how much)."""

    counts: dict[AgentStatus, int]
    usage: Usage
    cost_complete: bool
    # Agents that took an earlier call's answer (reuse), and what those calls had cost.
    reused: int = 0
    reuse_saved_usd: float | None = None

    @property
    def agents(self) -> int:
        return sum(self.counts.values())


# -- write operations ----------------------------------------------------------------------


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
    traceparent: str | None = None,
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
        "traceparent": traceparent,
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
            # Most agents of a big job depend on nothing: no encoder call for each.
            "depends_on_json": dumps(list(depends_on)) if depends_on else "[]",
            "attempts": 0,
            "rate_limited": 0,
            "kind": AgentKind.map if agent_id in map_nodes else AgentKind.agent,
        }
        for i, (agent_id, agent_model, depends_on) in enumerate(agents)
    ]
    return NewJob(row=row, agents=rows)


def create_job(new: NewJob, *, max_active: int | None = None) -> WriteOp[tuple[str, bool]]:
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
        row = dict(new.row)
        spec_json = row.pop("spec_json")
        tx.conn.execute(insert(jobs_t), [row])
        tx.conn.execute(insert(job_specs_t), [{"job_id": row["id"], "spec_json": spec_json}])
        # Before the agents: inserting them adds each of them to this row.
        tx.conn.execute(insert(job_totals_t), [{"job_id": row["id"]}])
        insert_agents(tx.conn, new.agents)
        job_id: str = new.row["id"]
        tx.emit(job_id, EventType.job_queued, agents=len(new.agents))
        return job_id, True

    return op


def request_cancel(job_id: str, tenant: str | None = None) -> WriteOp[JobStatus]:
    """Flag the job for cancellation (unless it has finished). Returns its status, or
    refuses with JobNotFoundError."""

    def op(tx: Tx) -> JobStatus | Refused:
        row = tx.conn.execute(select(jobs_t.c.status).where(owned(job_id, tenant))).first()
        if row is None:
            return Refused(JobNotFoundError(job_id))
        if row.status not in FINISHED_JOB_STATUSES:
            tx.conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.status.not_in(FINISHED_JOB_STATUSES))
                .values(cancel_requested=True)
            )
        return JobStatus(row.status)

    return op


def delete_job(job_id: str, tenant: str | None = None) -> WriteOp[None]:
    """Remove a finished job with its agents, events and webhook deliveries (those not yet
    made are dropped: their body would describe a job that no longer exists); refuses one
    still queued or running (JobStillRunningError) or that does not exist
    (JobNotFoundError)."""

    def op(tx: Tx) -> Refused | None:
        row = tx.conn.execute(select(jobs_t.c.status).where(owned(job_id, tenant))).first()
        if row is None:
            return Refused(JobNotFoundError(job_id))
        if row.status not in FINISHED_JOB_STATUSES:
            return Refused(JobStillRunningError(job_id, JobStatus(row.status)))
        tx.conn.execute(delete(events_t).where(events_t.c.job_id == job_id))
        forget_transcripts(tx, job_id)
        tx.conn.execute(delete(agents_t).where(agents_t.c.job_id == job_id))
        tx.conn.execute(delete(job_totals_t).where(job_totals_t.c.job_id == job_id))
        tx.conn.execute(delete(job_specs_t).where(job_specs_t.c.job_id == job_id))
        tx.conn.execute(delete(webhook_deliveries_t).where(webhook_deliveries_t.c.job_id == job_id))
        tx.conn.execute(delete(jobs_t).where(jobs_t.c.id == job_id))
        tx.forget_job(job_id)
        return None

    return op


def end_unfinished_job(job_id: str, status: JobStatus, reason: str) -> WriteOp[bool]:
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


# -- reads ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobTrace:
    """What a job's trace span shows."""

    name: str
    tenant: str
    status: str
    traceparent: str | None


def job_trace(conn: Connection, job_id: str) -> JobTrace | None:
    row = conn.execute(
        select(jobs_t.c.name, jobs_t.c.tenant, jobs_t.c.status, jobs_t.c.traceparent).where(
            jobs_t.c.id == job_id
        )
    ).first()
    return None if row is None else JobTrace(row.name, row.tenant, row.status, row.traceparent)


def find_idempotent(conn: Connection, tenant: str, key: str) -> PriorSubmit | None:
    """The tenant's job submitted with this Idempotency-Key, if any."""
    row = conn.execute(
        select(jobs_t.c.id, jobs_t.c.request_hash).where(
            jobs_t.c.tenant == tenant, jobs_t.c.idempotency_key == key
        )
    ).first()
    return None if row is None else PriorSubmit(row.id, row.request_hash)


def get_job(conn: Connection, job_id: str, tenant: str | None = None) -> StoredJob | None:
    """The job with its spec, or None when it does not exist or belongs to another tenant."""
    row = conn.execute(
        select(jobs_t, job_specs_t.c.spec_json)
        .join(job_specs_t, job_specs_t.c.job_id == jobs_t.c.id)
        .where(owned(job_id, tenant))
    ).first()
    return None if row is None else StoredJob.from_row(row)


def job_record(conn: Connection, job_id: str, tenant: str | None = None) -> JobRecord | None:
    """The job without its spec, or None when it does not exist or belongs to another
    tenant."""
    row = conn.execute(select(jobs_t).where(owned(job_id, tenant))).first()
    return None if row is None else JobRecord.from_row(row)


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
    conn: Connection,
    *,
    tenant: str,
    status: JobStatus | None,
    limit: int,
    before: str | None,
) -> list[JobRecord]:
    """The tenant's jobs newest first, `before` (a job id) excluded and older only."""
    q = select(jobs_t).where(jobs_t.c.tenant == tenant)
    if status is not None:
        q = q.where(jobs_t.c.status == status)
    if before is not None:
        q = q.where(jobs_t.c.id < before)
    rows = conn.execute(q.order_by(jobs_t.c.id.desc()).limit(limit)).all()
    return [JobRecord.from_row(r) for r in rows]


def job_totals(conn: Connection, job_id: str) -> JobTotals:
    """The job's totals: one row, kept by the triggers on `agents` (migration 0014)."""
    row = conn.execute(select(job_totals_t).where(job_totals_t.c.job_id == job_id)).first()
    if row is None:  # no such job
        return JobTotals(
            counts=dict.fromkeys(AgentStatus, 0),
            usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
            cost_complete=True,
        )
    t = row._mapping

    def known(total: str, count: str) -> Any:
        return t[total] if t[count] else None

    return JobTotals(
        counts={s: int(t[s.value]) for s in AgentStatus},
        usage=Usage(
            int(t["prompt_tokens"]),
            int(t["completion_tokens"]),
            int(t["total_tokens"]),
            known("cost_usd", "priced"),
            known("estimated_tokens", "estimated_tokens_n"),
            known("estimated_cost_usd", "estimated_cost_n"),
            known("cached_tokens", "cached_tokens_n"),
            known("reasoning_tokens", "reasoning_tokens_n"),
        ),
        cost_complete=t["priced"] == t["with_usage"],
        reused=int(t["reused"]),
        reuse_saved_usd=known("reuse_saved_usd", "reuse_saved_n"),
    )


def aggregate_job_totals(conn: Connection, job_id: str) -> JobTotals:
    """The job's totals summed over its agent rows: what `job_totals` must always equal
    (the tests compare the two; nothing else should need a scan of every agent)."""
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
            func.sum(agents_t.c.estimated_tokens),
            func.sum(agents_t.c.estimated_cost_usd),
            func.sum(agents_t.c.cached_tokens),
            func.sum(agents_t.c.reasoning_tokens),
            func.count(agents_t.c.reused_from_job_id),
            func.sum(agents_t.c.reuse_saved_usd),
        )
        .where(agents_t.c.job_id == job_id)
        .group_by(agents_t.c.status)
    ).all()
    counts = dict.fromkeys(AgentStatus, 0)
    usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    priced = with_usage = reused = 0
    saved: float | None = None
    for (
        status,
        n,
        p,
        c,
        t,
        cost_sum,
        n_priced,
        n_usage,
        est_tokens,
        est_cost,
        cached,
        reasoning,
        n_reused,
        saved_sum,
    ) in rows:
        counts[AgentStatus(status)] = int(n)
        cost = None if cost_sum is None else float(cost_sum)
        usage += Usage(
            int(p),
            int(c),
            int(t),
            cost,
            None if est_tokens is None else int(est_tokens),
            None if est_cost is None else float(est_cost),
            None if cached is None else int(cached),
            None if reasoning is None else int(reasoning),
        )
        priced += int(n_priced)
        with_usage += int(n_usage)
        reused += int(n_reused)
        if saved_sum is not None:
            saved = (saved or 0.0) + float(saved_sum)
    return JobTotals(
        counts=counts,
        usage=usage,
        cost_complete=priced == with_usage,
        reused=reused,
        reuse_saved_usd=saved,
    )


def unfinished_job_ids(conn: Connection) -> list[str]:
    rows = conn.execute(
        select(jobs_t.c.id)
        .where(jobs_t.c.status.in_([JobStatus.queued, JobStatus.running]))
        .order_by(jobs_t.c.id)
    ).all()
    return [r.id for r in rows]


def job_counts_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(jobs_t.c.status, func.count()).group_by(jobs_t.c.status)).all()
    return {str(r[0]): int(r[1]) for r in rows}


def count_tenant_jobs(conn: Connection, tenant: str) -> int:
    q = select(func.count()).select_from(jobs_t).where(jobs_t.c.tenant == tenant)
    return int(conn.execute(q).scalar_one())


def move_tenant_jobs(conn: Connection, source: str, target: str) -> tuple[int, int]:
    """Give every job of tenant ``source`` to tenant ``target`` (in the caller's transaction).

    Returns (jobs moved, idempotency keys dropped): a moved job whose Idempotency-Key the
    target already uses for a job of its own keeps its data but no longer answers repeats.
    """
    taken = select(jobs_t.c.idempotency_key).where(
        jobs_t.c.tenant == target, jobs_t.c.idempotency_key.is_not(None)
    )
    dropped = conn.execute(
        update(jobs_t)
        .where(jobs_t.c.tenant == source, jobs_t.c.idempotency_key.in_(taken))
        .values(idempotency_key=None)
    ).rowcount
    # The deliveries go with their jobs: from now on signed with the target's secret.
    conn.execute(
        update(webhook_deliveries_t)
        .where(webhook_deliveries_t.c.tenant == source)
        .values(tenant=target)
    )
    moved = conn.execute(
        update(jobs_t).where(jobs_t.c.tenant == source).values(tenant=target)
    ).rowcount
    return int(moved), int(dropped)
