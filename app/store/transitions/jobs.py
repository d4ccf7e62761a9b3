"""The job's own transitions: its start (and the recovery of a resumed run), its terminal
status, and a retry of a finished job under the same id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

from sqlalchemy import func, select, update

from app.engine.graph import Graph
from app.engine.lifecycle import (
    AGENT_ENTERED_FROM,
    FINISHED_JOB_STATUSES,
    JOB_ENTERED_FROM,
    RETRIED_JOB_STATUSES,
    AgentKind,
    AgentStatus,
    JobStatus,
)
from app.engine.run_state import agents_to_retry
from app.events.types import EventType
from app.store.models import utcnow
from app.store.steps import forget_transcripts
from app.store.tables import agents_t, dumps, events_t, job_specs_t, jobs_t, loads, owned
from app.store.transitions.common import agent_states, count_unknown_outcomes
from app.store.writer import Tx, WriteOp


@dataclass(frozen=True)
class StartDecision:
    start: bool  # False: the job has finished (cancelled in the meantime) or is gone
    cancel_requested: bool


class JobStartedData(TypedDict):
    resumed: bool


def _last_event_type(tx: Tx, job_id: str) -> str | None:
    pending = [e for e in tx.events if e.job_id == job_id]
    if pending:
        return pending[-1].type
    return tx.conn.execute(
        select(events_t.c.type)
        .where(events_t.c.job_id == job_id)
        .order_by(events_t.c.seq.desc())
        .limit(1)
    ).scalar()


def mark_job_started(job_id: str, resumed: bool) -> WriteOp[StartDecision]:
    """Mark the job running, unless it has finished meanwhile (a cancel can land between
    the submit and the run's start): a finished job never comes back to life."""

    def op(tx: Tx) -> StartDecision:
        row = tx.conn.execute(
            select(jobs_t.c.status, jobs_t.c.cancel_requested).where(jobs_t.c.id == job_id)
        ).first()
        if row is None or row.status in FINISHED_JOB_STATUSES:
            return StartDecision(False, False)
        now = utcnow()
        tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id, jobs_t.c.status.in_(JOB_ENTERED_FROM[JobStatus.running]))
            .values(status=JobStatus.running, started_at=func.coalesce(jobs_t.c.started_at, now))
        )
        # Run again by a retry (its rows say what is left), not resumed after a restart.
        restarted = resumed and _last_event_type(tx, job_id) != EventType.job_retried
        if restarted:
            # The calls a crash cut off may have been paid for: their estimates are counted.
            count_unknown_outcomes(tx, job_id, None)
            # Agents caught mid-call by a crash go back to pending; their attempt stays counted.
            # (A running map node is waiting for its items, which resume under it.)
            # Nor is an agent waiting for its merge steps.
            parents = (
                select(agents_t.c.parent_id)
                .where(agents_t.c.job_id == job_id, agents_t.c.parent_id.is_not(None))
                .distinct()
            )
            tx.conn.execute(
                update(agents_t)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.status == AgentStatus.running,
                    agents_t.c.kind != AgentKind.map,
                    agents_t.c.agent_id.not_in(parents),
                )
                .values(status=AgentStatus.pending)
            )
        tx.emit(job_id, EventType.job_started, **JobStartedData(resumed=restarted))
        return StartDecision(True, bool(row.cancel_requested))

    return op


_TERMINAL_EVENT = {
    JobStatus.completed: EventType.job_completed,
    JobStatus.failed: EventType.job_failed,
    JobStatus.cancelled: EventType.job_cancelled,
}


class JobFinishedData(TypedDict, total=False):
    counts: dict[str, int]  # agents by status
    error: str
    # The job's totals, as GET /jobs/{id} gives them (estimates included and flagged).
    usage: dict[str, int | None]
    cost_usd: float | None
    usage_estimated: bool
    estimated_cost_usd: float | None


def mark_job_finished(job_id: str, status: JobStatus, error: str | None) -> WriteOp[bool]:
    """The job's terminal status; False (and no event) if it has finished already."""

    def op(tx: Tx) -> bool:
        ended = tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id, jobs_t.c.status.in_(JOB_ENTERED_FROM[status]))
            .values(status=status, error=error, finished_at=utcnow())
        )
        if not ended.rowcount:
            return False
        counts: dict[str, int] = dict(
            tx.conn.execute(
                select(agents_t.c.status, func.count())
                .where(agents_t.c.job_id == job_id)
                .group_by(agents_t.c.status)
            ).all()
        )
        # Imported here: the jobs store builds on these transitions.
        from app.store.jobs import job_totals

        usage = job_totals(tx.conn, job_id).usage
        data = JobFinishedData(
            counts={str(k): int(v) for k, v in counts.items()},
            usage=usage.tokens(),
            cost_usd=usage.cost_usd,
            usage_estimated=usage.estimated,
            estimated_cost_usd=usage.estimated_cost_usd,
        )
        if error:
            data["error"] = error
        tx.emit(job_id, _TERMINAL_EVENT[status], **data)
        return True

    return op


# -- a retry of a finished job ----------------------------------------------------------


class RetryRefusal(StrEnum):
    not_found = "not_found"  # no such job for this tenant
    not_finished = "not_finished"  # still queued or running
    completed = "completed"  # every agent completed: nothing failed
    nothing_to_retry = "nothing_to_retry"  # failed or cancelled, yet no agent to run again
    budget_spent = "budget_spent"  # the job's budget is spent and the retry did not raise it
    too_many_active = "too_many_active"  # the tenant has its most jobs queued or running


@dataclass(frozen=True)
class RetryResult:
    refused: RetryRefusal | None = None
    status: JobStatus | None = None  # the job's status when refused (or `running`)
    retried: int = 0  # agents back to pending
    spent_usd: float = 0.0
    budget_usd: float | None = None
    seq: int = 0  # the sequence number of the `job.retried` event
    active: int = 0  # too_many_active: the tenant's jobs queued or running, and the limit
    limit: int = 0


class JobRetriedData(TypedDict):
    agents: int  # how many agents went back to pending
    from_status: dict[str, int]  # of those, how many were failed, skipped, cancelled, …
    previous_status: str  # the job's status before the retry
    budget_usd: float | None
    max_retries: int | None  # the job's max_retries, when the retry set it


def retry_job(
    job_id: str,
    tenant: str | None,
    *,
    graph: Callable[[str], Graph | None],
    budget_usd: float | None,
    max_retries: int | None,
    max_active: int | None = None,
) -> WriteOp[RetryResult]:
    """Make a failed or cancelled job runnable again under the same id: the agents
    `agents_to_retry` names go back to pending (their attempts, usage and cost kept), the
    job back to running with its error cleared, and `job.retried` is emitted with the next
    sequence number. `budget_usd` / `max_retries`, when given, replace the job's. The run
    itself is then resumed from these rows, exactly as after a restart. `graph` reads the
    stored spec's graph. `max_active`: the tenant's limit of jobs queued or running, which
    the retried job would join (checked here, in the writer, as at submit)."""

    def op(tx: Tx) -> RetryResult:
        job = tx.conn.execute(
            select(jobs_t.c.status, job_specs_t.c.spec_json, jobs_t.c.budget_usd, jobs_t.c.tenant)
            .join(job_specs_t, job_specs_t.c.job_id == jobs_t.c.id)
            .where(owned(job_id, tenant))
        ).first()
        if job is None:
            return RetryResult(RetryRefusal.not_found)
        status = JobStatus(job.status)
        if status is JobStatus.completed:
            return RetryResult(RetryRefusal.completed, status)
        if status not in RETRIED_JOB_STATUSES:
            return RetryResult(RetryRefusal.not_finished, status)
        rows = agent_states(tx.conn, job_id)
        ids = agents_to_retry(rows, graph(job.spec_json))
        if not ids:
            return RetryResult(RetryRefusal.nothing_to_retry, status)
        spent = sum(r.usage.cost_usd or 0.0 for r in rows)
        budget = job.budget_usd if budget_usd is None else budget_usd
        if budget is not None and spent >= budget:
            return RetryResult(
                RetryRefusal.budget_spent, status, spent_usd=spent, budget_usd=budget
            )
        if max_active is not None:
            active = int(
                tx.conn.execute(
                    select(func.count()).where(
                        jobs_t.c.tenant == job.tenant,
                        jobs_t.c.status.in_((JobStatus.queued, JobStatus.running)),
                    )
                ).scalar_one()
            )
            if active >= max_active:
                return RetryResult(
                    RetryRefusal.too_many_active, status, active=active, limit=max_active
                )
        spec = loads(job.spec_json, {})
        if budget_usd is not None:
            spec["budget_usd"] = budget_usd
        if max_retries is not None:
            # The job's value, and every agent's own one below it, so the raise applies to
            # each agent; `max_retries` counts an agent's failed attempts across runs.
            spec["max_retries"] = max_retries
            for agent in spec.get("agents", []):
                own = agent.get("max_retries")
                if own is not None and own < max_retries:
                    agent["max_retries"] = max_retries
        tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id, jobs_t.c.status.in_(RETRIED_JOB_STATUSES))
            .values(
                status=JobStatus.running,
                error=None,
                finished_at=None,
                cancel_requested=False,
                budget_usd=budget,
            )
        )
        tx.conn.execute(
            update(job_specs_t).where(job_specs_t.c.job_id == job_id).values(spec_json=dumps(spec))
        )
        before = {r.agent_id: r.status for r in rows}
        allowed = AGENT_ENTERED_FROM[AgentStatus.pending]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            tx.conn.execute(
                update(agents_t)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.agent_id.in_(chunk),
                    agents_t.c.status.in_(allowed),
                )
                .values(status=AgentStatus.pending, finished_at=None)
            )
            # A retried tool-using agent's loop starts afresh (what it spent stays counted).
            forget_transcripts(tx, job_id, chunk)
        from_status: dict[str, int] = {}
        for agent_id in ids:
            key = str(before[agent_id])
            from_status[key] = from_status.get(key, 0) + 1
        tx.emit(
            job_id,
            EventType.job_retried,
            **JobRetriedData(
                agents=len(ids),
                from_status=from_status,
                previous_status=str(status),
                budget_usd=budget,
                max_retries=max_retries,
            ),
        )
        return RetryResult(None, JobStatus.running, len(ids), spent, budget, tx.events[-1].seq)

    return op
