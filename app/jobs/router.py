"""Routes for jobs: submit, list, inspect, results, cancel, retry, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import JobsDep
from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.spec import JobSpec
from app.jobs.schemas import (
    AgentDetail,
    AgentPage,
    CancelAccepted,
    JobPage,
    JobPublic,
    JobResults,
    RetryAccepted,
    RetryRequest,
)

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=AUTH_RESPONSES)

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or agent)."},
}
# Every route that writes: the database may refuse the write for a while.
_UNWRITABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The database cannot be written now (disk full, read-only): nothing "
        "was stored; `detail` says why. Retry after Retry-After seconds."
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"description": "Repeated submit with the same Idempotency-Key and body."},
        400: {"description": "The body cannot be read at all (e.g. not UTF-8)."},
        409: {"description": "Idempotency-Key reused with a different body."},
        413: {"description": "Request body too large."},
        429: {
            "description": "Too many submits, or too many active jobs, for this tenant; "
            "see Retry-After."
        },
        422: {"description": "The job graph is invalid; `detail` names each problem."},
        **_UNWRITABLE,
    },
)
async def submit_job(
    spec: JobSpec,
    jobs: JobsDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    traceparent: Annotated[
        str | None,
        Header(
            description="W3C Trace Context: the job's trace spans are children of it (when "
            "OpenTelemetry is on). An invalid value is ignored."
        ),
    ] = None,
) -> JobPublic:
    """Validate and store a job graph, then run it in the background."""
    submitted = await jobs.submit(spec, tenant, idempotency_key, traceparent)
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/jobs/{submitted.job.id}"
    return submitted.job


@router.get("", response_model=JobPage)
async def list_jobs(
    jobs: JobsDep,
    tenant: TenantDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=26, pattern=r"^[0-9a-hjkmnp-tv-z]{26}$")] = None,
) -> JobPage:
    """Jobs, newest first. Follow `next_cursor` for older pages."""
    return await jobs.list(tenant, status=status_, limit=limit, cursor=cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
async def get_job(
    job_id: str,
    jobs: JobsDep,
    tenant: TenantDep,
    agents: Annotated[
        bool, Query(description="Include the first agents (a summary row each).")
    ] = True,
    agents_limit: Annotated[
        int, Query(ge=1, le=1000, description="List at most this many agents.")
    ] = 200,
) -> JobPublic:
    """Status, counts by agent status, usage, cost, timestamps and the first agents (all
    of them up to `agents_limit`; `agents_next_cursor` pages on through
    `GET /jobs/{id}/agents`)."""
    return await jobs.get(tenant, job_id, with_agents=agents, agents_limit=agents_limit)


@router.get("/{job_id}/agents", response_model=AgentPage, responses=_ERRORS)
async def list_agents(
    job_id: str,
    jobs: JobsDep,
    tenant: TenantDep,
    status_: Annotated[AgentStatus | None, Query(alias="status")] = None,
    kind: Annotated[AgentKind | None, Query()] = None,
    parent: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=r"^[^\x00]*$",
            description="Only the sub-agents of this agent.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    cursor: Annotated[str | None, Query(max_length=20, pattern=r"^\d{1,9}\.-?\d{1,9}$")] = None,
) -> AgentPage:
    """The job's agents in listing order (submission order, each map node's items and each
    reducer's merge steps right after it), a page at a time, optionally filtered: e.g. the
    failed items of one map node with `?parent=parts&status=failed`."""
    return await jobs.agents(
        tenant, job_id, status=status_, kind=kind, parent=parent, limit=limit, cursor=cursor
    )


@router.get("/{job_id}/agents/{agent_id}", response_model=AgentDetail, responses=_ERRORS)
async def get_agent(job_id: str, agent_id: str, jobs: JobsDep, tenant: TenantDep) -> AgentDetail:
    """One agent in full: the prompt as sent, output, usage, cost, attempts, retries."""
    return await jobs.agent(tenant, job_id, agent_id)


@router.get("/{job_id}/results", response_model=JobResults, responses=_ERRORS)
async def get_results(job_id: str, jobs: JobsDep, tenant: TenantDep) -> JobResults:
    """Outputs of the completed agents, by agent id (partial while the job runs)."""
    return await jobs.results(tenant, job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CancelAccepted,
    responses={**_ERRORS, 409: {"description": "The job has already finished."}, **_UNWRITABLE},
)
async def cancel_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> CancelAccepted:
    """Stop pending agents and abort in-flight calls; the job ends `cancelled`."""
    return await jobs.cancel(tenant, job_id)


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RetryAccepted,
    responses={
        **_ERRORS,
        400: {"description": "The body cannot be read at all (e.g. not UTF-8)."},
        409: {
            "description": "The job is queued or running, completed, has nothing to retry, "
            "or its budget is spent (raise budget_usd)."
        },
        429: {
            "description": "The tenant has its most jobs queued or running (as at submit); "
            "see Retry-After."
        },
        **_UNWRITABLE,
    },
)
async def retry_job(
    job_id: str, jobs: JobsDep, tenant: TenantDep, body: RetryRequest | None = None
) -> RetryAccepted:
    """Run a failed or cancelled job again under the same id. Its failed, skipped and
    cancelled agents (map items and merge steps included) go back to pending with their
    attempt history kept; completed agents keep their outputs and are not called again.
    Events continue with the next sequence numbers, `job.retried` first; counts, usage and
    cost accumulate over the runs."""
    return await jobs.retry(tenant, job_id, body or RetryRequest())


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **_ERRORS,
        409: {"description": "The job is still queued or running."},
        **_UNWRITABLE,
    },
)
async def delete_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    """Remove a finished job, its agents and its events."""
    await jobs.delete(tenant, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
