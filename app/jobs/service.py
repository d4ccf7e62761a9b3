"""The jobs feature's rules: submit, get, list, cancel and delete jobs, and read their
agents, results and figures. Store refusals become the feature's errors here, once."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection

from app.engine.graph import Graph, validate_graph
from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.spec import JobSpec
from app.errors import ServiceError, store_unwritable
from app.jobs import errors
from app.jobs.admission import Admission, request_hash
from app.jobs.schemas import (
    AgentCounts,
    AgentDetail,
    AgentPage,
    AgentSummary,
    CancelAccepted,
    JobListItem,
    JobMetrics,
    JobPage,
    JobPublic,
    JobResults,
    LatencyStats,
    RetryAccepted,
    RetryRecord,
    RetryRequest,
    TranscriptStep,
    Usage,
)
from app.scheduler.scheduler import Scheduler
from app.store import agents as agent_store
from app.store import events as event_store
from app.store import jobs as job_store
from app.store import steps as step_store
from app.store import transitions as ops
from app.store.agents import CallStats, ListedAgent
from app.store.ids import new_job_id
from app.store.jobs import JobRecord, JobStoreError, JobTotals, StoredJob
from app.store.models import utcnow
from app.store.store import Store
from app.store.writer import StoreUnwritableError, WriteOp
from app.telemetry import valid_traceparent

T = TypeVar("T")


@dataclass(frozen=True)
class Submitted:
    job: JobPublic
    created: bool  # False: a repeated submit with the same Idempotency-Key and body


class JobsService:
    def __init__(self, store: Store, scheduler: Scheduler, admission: Admission) -> None:
        self.store = store
        self.scheduler = scheduler
        self.admission = admission

    async def submit(
        self,
        spec: JobSpec,
        tenant: str,
        idempotency_key: str | None,
        traceparent: str | None = None,
    ) -> Submitted:
        """Validate and store a job graph, then hand it to the scheduler. `traceparent`:
        the request's W3C trace context (an invalid one is ignored)."""
        body_hash = await asyncio.to_thread(request_hash, spec) if idempotency_key else None
        if idempotency_key:
            # A retry of an accepted submit gets its job back before any limit applies.
            prior = await self.store.read(
                lambda c: job_store.find_idempotent(c, tenant, idempotency_key)
            )
            if prior is not None:
                if prior.request_hash != body_hash:
                    raise errors.IdempotencyConflict(prior.id)
                return Submitted(await self.get(tenant, prior.id, with_agents=False), False)
        await self.admission.check_submit(tenant)
        admitted = await self.admission.admit(spec)
        new = job_store.new_job(
            job_id=new_job_id(),
            tenant=tenant,
            name=spec.name,
            model=admitted.model,
            agents=[(a.id, a.model or admitted.model, a.depends_on) for a in admitted.agents],
            failure_policy=str(spec.failure_policy),
            max_concurrency=spec.max_concurrency,
            budget_usd=spec.budget_usd,
            spec_json=admitted.spec_json,
            metadata=spec.metadata,
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            map_nodes=admitted.graph.maps.keys(),
            traceparent=valid_traceparent(traceparent),
        )
        max_active = self.admission.settings.tenant_max_active_jobs
        async with self.admission.active_jobs_turn(tenant):
            job_id, created = await self._write(job_store.create_job(new, max_active=max_active))
        if created:
            self.scheduler.submit(
                job_id,
                spec,
                admitted.graph,
                tenant=tenant,
                model=admitted.model,
                agents=admitted.agents,
            )
        return Submitted(await self.get(tenant, job_id, with_agents=False), created)

    async def require(self, tenant: str, job_id: str) -> JobRecord:
        """The tenant's job, or JobNotFound."""
        return await self.store.read(lambda c: _owned_job(c, tenant, job_id))

    async def require_with_spec(self, tenant: str, job_id: str) -> StoredJob:
        """The tenant's job with the spec it was submitted with, or JobNotFound."""

        def read(conn: Connection) -> StoredJob:
            job = job_store.get_job(conn, job_id, tenant)
            if job is None:
                raise errors.JobNotFound()
            return job

        return await self.store.read(read)

    async def get(
        self, tenant: str, job_id: str, *, with_agents: bool, agents_limit: int = 200
    ) -> JobPublic:
        """The job, its totals and (`with_agents`) its first `agents_limit` agents: a
        100,000-agent job is not serialised whole on every poll."""

        def read(conn: Connection) -> JobPublic:
            job = _owned_job(conn, tenant, job_id)
            totals = job_store.job_totals(conn, job_id)
            if not with_agents:
                return JobPublic.of(job, totals, None)
            rows, cursor = _one_page(
                agent_store.list_agents(conn, job_id, limit=agents_limit + 1), agents_limit
            )
            return JobPublic.of(job, totals, rows, cursor)

        return await self.store.read(read)

    async def list(
        self, tenant: str, *, status: JobStatus | None, limit: int, cursor: str | None
    ) -> JobPage:
        """Jobs newest first; `cursor` is the last job id of the previous page."""
        rows = await self.store.read(
            lambda c: job_store.list_jobs(
                c, tenant=tenant, status=status, limit=limit + 1, before=cursor
            )
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return JobPage(
            data=[JobListItem.model_validate(r) for r in rows],
            next_cursor=rows[-1].id if more and rows else None,
        )

    async def agents(
        self,
        tenant: str,
        job_id: str,
        *,
        status: AgentStatus | None,
        kind: AgentKind | None,
        parent: str | None,
        limit: int,
        cursor: str | None,
    ) -> AgentPage:
        """A page of the job's agents in listing order; `cursor` is "position.sub_order"
        of the last agent of the previous page."""
        after = None
        if cursor is not None:
            position, sub = cursor.split(".")
            after = (int(position), int(sub))

        def read(conn: Connection) -> list[ListedAgent]:
            _owned_job(conn, tenant, job_id)
            return agent_store.list_agents(
                conn, job_id, status=status, kind=kind, parent=parent, limit=limit + 1, after=after
            )

        rows, cursor = _one_page(await self.store.read(read), limit)
        return AgentPage(data=[AgentSummary.model_validate(r) for r in rows], next_cursor=cursor)

    async def agent(self, tenant: str, job_id: str, agent_id: str) -> AgentDetail:

        def read(conn: Connection) -> AgentDetail:
            _owned_job(conn, tenant, job_id)
            row = agent_store.get_agent(conn, job_id, agent_id)
            if row is None:
                raise errors.AgentNotFound()
            retries = event_store.agent_retries(conn, job_id, agent_id)
            steps = step_store.transcript_rows(conn, job_id, agent_id)
            detail = AgentDetail.model_validate(row)
            return detail.model_copy(
                update={
                    "retries": [RetryRecord.model_validate(r) for r in retries],
                    "transcript": [TranscriptStep.model_validate(s) for s in steps],
                }
            )

        return await self.store.read(read)

    async def results(self, tenant: str, job_id: str) -> JobResults:
        """Outputs of the completed agents, by agent id (partial while the job runs)."""

        def read(conn: Connection) -> tuple[JobRecord, list[tuple[str, str]]]:
            return _owned_job(conn, tenant, job_id), agent_store.completed_outputs(conn, job_id)

        job, outputs = await self.store.read(read)
        return JobResults(
            job_id=job_id,
            status=job.status,
            complete=len(outputs) == job.agents_total,
            results=dict(outputs),
        )

    async def metrics(self, tenant: str, job_id: str) -> JobMetrics:

        def read(conn: Connection) -> tuple[JobRecord, JobTotals, CallStats]:
            job = _owned_job(conn, tenant, job_id)
            return job, job_store.job_totals(conn, job_id), agent_store.call_stats(conn, job_id)

        job, totals, calls = await self.store.read(read)
        wall: float | None = None
        if job.started_at is not None:
            end = job.finished_at or utcnow()
            wall = max((end - job.started_at).total_seconds(), 0.0)
        completed = totals.counts[AgentStatus.completed]
        return JobMetrics(
            job_id=job_id,
            status=job.status,
            counts=AgentCounts.of(totals),
            usage=Usage.of(totals.usage),
            cost_usd=totals.usage.cost_usd,
            latency=latency_stats(calls.latencies_ms),
            calls=calls.calls,
            retries=calls.retries,
            rate_limited=calls.rate_limited,
            wall_time_s=None if wall is None else round(wall, 3),
            agents_per_second=round(completed / wall, 3) if wall else None,
        )

    async def cancel(self, tenant: str, job_id: str) -> CancelAccepted:
        """Flag the job and stop its run; the job ends `cancelled`."""
        current = await self._write(job_store.request_cancel(job_id, tenant))
        if current.finished:
            raise errors.JobAlreadyFinished(current)
        await self.scheduler.cancel(job_id)
        return CancelAccepted(id=job_id, status=current, detail="cancellation requested")

    async def retry(self, tenant: str, job_id: str, body: RetryRequest) -> RetryAccepted:
        """Run a failed or cancelled job again under the same id: its failed, skipped and
        cancelled agents go back to pending, completed ones keep their outputs."""
        async with self.admission.active_jobs_turn(tenant):
            result = await self._write(
                ops.retry_job(
                    job_id,
                    tenant,
                    graph=self._stored_graph,
                    budget_usd=body.budget_usd,
                    max_retries=body.max_retries,
                    max_active=self.admission.settings.tenant_max_active_jobs,
                )
            )
        if result.refused is not None:
            raise _retry_refused(job_id, result)
        await self.scheduler.resume(job_id)
        return RetryAccepted(
            id=job_id,
            status=JobStatus.running,
            agents_retried=result.retried,
            retried_seq=result.seq,
            detail=f"{result.retried} agent(s) back to pending; the job runs again",
        )

    def _stored_graph(self, spec_json: str) -> Graph | None:
        """The graph of a stored job (None if it can no longer be read; its run says so)."""
        try:
            spec = JobSpec.model_validate_json(spec_json)
            return validate_graph(
                spec,
                max_agents=max(len(spec.agents), 1),
                max_map_items=self.admission.settings.max_map_items,
                max_map_items_per_job=2**62,
            )
        except Exception:
            return None

    async def delete(self, tenant: str, job_id: str) -> None:
        """Remove a finished job, its agents and its events."""
        await self._write(job_store.delete_job(job_id, tenant))

    async def _write(self, op: WriteOp[T]) -> T:
        try:
            return await self.store.write(op)
        except JobStoreError as exc:
            raise _service_error(exc) from None
        except StoreUnwritableError as exc:
            raise store_unwritable(exc.reason) from None


def _one_page(rows: list[ListedAgent], limit: int) -> tuple[list[ListedAgent], str | None]:
    """The first `limit` of `rows` (read with `limit + 1`) and the cursor of the next page,
    None when there is none."""
    page = rows[:limit]
    return page, page[-1].cursor if len(rows) > limit and page else None


def _owned_job(conn: Connection, tenant: str, job_id: str) -> JobRecord:
    job = job_store.job_record(conn, job_id, tenant)
    if job is None:
        raise errors.JobNotFound()
    return job


def _retry_refused(job_id: str, result: ops.RetryResult) -> ServiceError:
    """Why a job cannot be retried, as the caller's error."""
    refused = result.refused
    if refused is ops.RetryRefusal.not_found:
        return errors.JobNotFound()
    if refused is ops.RetryRefusal.not_finished:
        return errors.JobNotRetryable(
            f"job is {result.status}; only a failed or cancelled job can be retried "
            f"(cancel it first: POST /jobs/{job_id}/cancel)"
        )
    if refused is ops.RetryRefusal.completed:
        return errors.JobNotRetryable("job completed; nothing to retry")
    if refused is ops.RetryRefusal.too_many_active:
        return errors.TooManyActiveJobs(result.active, result.limit)
    if refused is ops.RetryRefusal.budget_spent:
        return errors.JobNotRetryable(
            f"the job's budget of ${result.budget_usd or 0:.4f} is spent "
            f"(${result.spent_usd:.4f}); retry with a higher budget_usd"
        )
    return errors.JobNotRetryable(f"job is {result.status} but no agent is left to retry")


def _service_error(exc: JobStoreError) -> ServiceError:
    """What a store refusal means to the caller."""
    if isinstance(exc, job_store.JobNotFoundError):
        return errors.JobNotFound()
    if isinstance(exc, job_store.JobStillRunningError):
        return errors.JobStillRunning(exc.job_id, exc.status)
    if isinstance(exc, job_store.IdempotencyConflictError):
        return errors.IdempotencyConflict(exc.job_id)
    if isinstance(exc, job_store.TooManyActiveJobsError):
        return errors.TooManyActiveJobs(exc.active, exc.limit)
    raise TypeError(f"unhandled store refusal {exc!r}")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(values: list[float]) -> LatencyStats:
    if not values:
        return LatencyStats(count=0, avg_ms=None, p50_ms=None, p95_ms=None, max_ms=None)
    values = sorted(values)
    return LatencyStats(
        count=len(values),
        avg_ms=round(sum(values) / len(values), 3),
        p50_ms=round(_percentile(values, 0.50), 3),
        p95_ms=round(_percentile(values, 0.95), 3),
        max_ms=round(values[-1], 3),
    )
