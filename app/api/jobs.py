"""Routes for jobs: submit, list, inspect, results, cancel, delete."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import ServicesDep
from app.api.schemas import (
    AgentCounts,
    AgentDetail,
    AgentPage,
    AgentSummary,
    CancelAccepted,
    JobListItem,
    JobPage,
    JobPublic,
    JobResults,
    RetryRecord,
    Usage,
)
from app.engine.graph import (
    Graph,
    GraphValidationError,
    MapPlan,
    mappable_items,
    validate_graph,
)
from app.engine.spec import JobSpec, ResolvedAgent
from app.engine.templates import MapItem, RefKind, format_value, lookup_context, scan_refs
from app.errors import ConflictError, NotFoundError, TooManyRequestsError, UnprocessableError
from app.scheduler.limits import TokenBucket
from app.store import repository as repo
from app.store.ids import new_job_id
from app.store.models import AgentKind, AgentStatus, JobStatus
from app.upstream.pool import NoRouteError

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=AUTH_RESPONSES)

JOB_NOT_FOUND = "job not found"
_IDEMPOTENCY_CONFLICT = "Idempotency-Key was already used for job {job_id} with a different body"
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or agent)."},
}


def _job_public(row: Any, totals: repo.JobTotals, agents: list[Any] | None) -> JobPublic:
    counts = AgentCounts(**totals.counts, total=sum(totals.counts.values()))
    return JobPublic(
        id=row.id,
        name=row.name,
        status=row.status,
        model=row.model,
        failure_policy=row.failure_policy,
        max_concurrency=row.max_concurrency,
        budget_usd=row.budget_usd,
        metadata=repo.loads(row.metadata_json, {}),
        error=row.error,
        counts=counts,
        usage=Usage(
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            total_tokens=totals.total_tokens,
        ),
        cost_usd=totals.cost_usd,
        cost_complete=totals.cost_complete,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        agents=None if agents is None else [_agent_summary(a) for a in agents],
    )


def _agent_summary(a: Any) -> AgentSummary:
    return AgentSummary(
        id=a.agent_id,
        kind=a.kind,
        parent=a.parent_id,
        status=a.status,
        model=a.model,
        depends_on=repo.loads(a.depends_on_json, []),
        attempts=a.attempts,
        total_tokens=a.total_tokens,
        cost_usd=a.cost_usd,
        latency_ms=a.latency_ms,
        error=a.last_error,
    )


def _admit_submit(services: ServicesDep, tenant: str) -> None:
    """Per-tenant submit rate: a bucket of two seconds' worth, refilled continuously."""
    rate = services.settings.tenant_submits_per_s
    bucket = services.submit_buckets.get(tenant)
    if bucket is None:
        bucket = services.submit_buckets[tenant] = TokenBucket(
            rate_per_s=rate, capacity=max(1.0, 2 * rate)
        )
    wait = bucket.try_take(1)
    if wait > 0:
        raise TooManyRequestsError(
            f"too many submits: this tenant may submit {rate:g} jobs per second",
            retry_after_s=wait,
        )


def _check_routes(services: ServicesDep, agents: list[ResolvedAgent], default: str) -> None:
    """Every model the job uses must have an upstream, or nothing is stored."""
    problems: list[dict[str, Any]] = []
    seen: dict[str, str | None] = {}
    for i, agent in enumerate(agents):
        model = agent.model or default
        if model not in seen:
            try:
                services.upstreams.route(model)
                seen[model] = None
            except NoRouteError as exc:
                seen[model] = str(exc)
        if seen[model] is not None:
            loc = ["body", "agents", i, "model"] if agent.model else ["body", "model"]
            problems.append({"loc": loc, "msg": seen[model], "type": "no_upstream"})
            if len(problems) >= 20:
                break
    if problems:
        raise UnprocessableError(problems)


# How deep `context` and `metadata` may nest. Deeper JSON cannot be read back by the
# parser that restores jobs after a restart (its limit is 200), and no prompt needs it.
MAX_JSON_DEPTH = 64


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _storable_json(spec: JobSpec) -> str:
    """The spec as stored; a job the service could not read back after a restart is a 422
    now rather than a failure then."""
    for field in ("context", "metadata"):
        if _depth(getattr(spec, field)) > MAX_JSON_DEPTH:
            raise UnprocessableError(
                [
                    {
                        "loc": ["body", field],
                        "type": "too_deep",
                        "msg": f"{field} nests more than {MAX_JSON_DEPTH} levels deep",
                    }
                ]
            )
    try:
        return spec.model_dump_json()
    except ValueError as exc:  # e.g. a lone surrogate, which JSON cannot carry as UTF-8
        raise UnprocessableError(
            [
                {
                    "loc": ["body"],
                    "type": "unencodable",
                    "msg": "the job contains text that cannot be stored as UTF-8 "
                    f"({type(exc).__name__})",
                }
            ]
        ) from None


def _body_hash(spec: JobSpec) -> str:
    """A digest of the request's meaning: key order and whitespace do not change it."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_prompt_sizes(
    spec: JobSpec, graph: Graph, agents: list[ResolvedAgent], limit: int
) -> None:
    """What the templates make of the context is known now: refuse prompts that would
    exceed the limit before any of them runs (outputs of dependencies come on top)."""
    sizes: dict[str, int] = {}

    def rendered_size(text: str | None) -> int:
        if not text:
            return 0
        size = len(text)
        for ref in scan_refs(text)[0]:
            if ref.kind is RefKind.context and ref.key is not None:
                if ref.key not in sizes:
                    sizes[ref.key] = len(format_value(lookup_context(spec.context, ref.path)))
                size += sizes[ref.key] - len(ref.raw)
        return size

    problems = []
    for i, agent in enumerate(agents):
        size = rendered_size(agent.task) + rendered_size(agent.system_prompt)
        plan = graph.maps.get(agent.id)
        item, item_size = (None, 0) if plan is None else _largest_list_item(spec, plan, agent)
        what = "the context is filled in"
        if item is not None:
            size += item_size
            what = f"the context and its largest item (item {item}) are filled in"
        if size > limit:
            problems.append(
                {
                    "loc": ["body", "agents", i, "task"],
                    "type": "prompt_too_large",
                    "msg": f"agent {agent.id!r}: its prompt would be {size:,} characters once "
                    f"{what}, over the limit of {limit:,}",
                }
            )
            if len(problems) >= 20:
                break
    if problems:
        raise UnprocessableError(problems)


# What the appended <item index="…" count="…"> block adds around an item, at most.
_ITEM_BLOCK_CHARS = 64


def _largest_list_item(
    spec: JobSpec, plan: MapPlan, agent: ResolvedAgent
) -> tuple[int | None, int]:
    """For a map over a list in the context: the item whose rendering in the task is the
    longest, and that length (the task's {{item…}} references, or the appended block)."""
    if plan.source_agent is not None:
        return None, 0
    items = mappable_items(lookup_context(spec.context, plan.context_path))
    if not items:
        return None, 0
    refs = [r for r in scan_refs(agent.task)[0] if r.kind is RefKind.item]
    best, best_size = None, -1
    for k, value in enumerate(items):
        item = MapItem(index=k, count=len(items), value=value)
        if refs:
            size = sum(len(item.render(r.path)) - len(r.raw) for r in refs)
        else:
            size = len(item.render()) + _ITEM_BLOCK_CHARS
        if size > best_size:
            best, best_size = k, size
    return best, max(best_size, 0)


def _check_prices(services: ServicesDep, agents: list[ResolvedAgent], default: str) -> None:
    """A budget can only be enforced in money: every model must have a price."""
    unpriced = sorted(
        {
            m
            for m in (a.model or default for a in agents)
            if services.upstreams.registry.get(m).input_usd_per_mtok is None
            or services.upstreams.registry.get(m).output_usd_per_mtok is None
        }
    )
    if unpriced:
        raise UnprocessableError(
            [
                {
                    "loc": ["body", "budget_usd"],
                    "type": "budget_without_prices",
                    "msg": "budget_usd needs a price for every model, and these have none: "
                    + ", ".join(unpriced)
                    + " (set their prices in the models file)",
                }
            ]
        )


def _check_chunk_windows(
    services: ServicesDep, spec: JobSpec, graph: Graph, agents: list[ResolvedAgent], default: str
) -> None:
    """A chunk, its task and the room for the answer must fit the map node's model."""
    problems = []
    for i, agent in enumerate(agents):
        plan = graph.maps.get(agent.id)
        if plan is None or plan.known_items is None or plan.source_agent is not None:
            continue
        if not isinstance(lookup_context(spec.context, plan.context_path), str):
            continue
        info = services.upstreams.registry.get(agent.model or default)
        window = info.context_window
        needed = plan.chunk_tokens + (agent.max_tokens or 0)
        if window is not None and needed > window:
            problems.append(
                {
                    "loc": ["body", "agents", i, "map", "chunk_tokens"],
                    "type": "map.chunk_too_large",
                    "msg": f"map node {agent.id!r}: chunks of {plan.chunk_tokens:,} tokens"
                    + (f" plus max_tokens {agent.max_tokens:,}" if agent.max_tokens else "")
                    + f" do not fit the {window:,}-token window of {info.name}; lower "
                    "chunk_tokens",
                }
            )
    if problems:
        raise UnprocessableError(problems)


async def _load_job(
    services: ServicesDep, tenant: str, job_id: str, *, with_agents: bool
) -> JobPublic:
    def read(conn: Any) -> tuple[Any, repo.JobTotals, list[Any] | None] | None:
        row = repo.get_job(conn, job_id, tenant)
        if row is None:
            return None
        agents = repo.agent_summaries(conn, job_id) if with_agents else None
        return row, repo.job_totals(conn, job_id), agents

    found = await services.store.read(read)
    if found is None:
        raise NotFoundError(JOB_NOT_FOUND)
    return _job_public(*found)


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
    },
)
async def submit_job(
    spec: JobSpec,
    services: ServicesDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """Validate and store a job graph, then run it in the background."""
    settings = services.settings
    # The work below is proportional to the body (up to SWARM_MAX_REQUEST_BYTES): it runs in
    # a worker thread, so a large submit never stalls the event loop and other requests.
    body_hash = await asyncio.to_thread(_body_hash, spec) if idempotency_key else None
    if idempotency_key:
        # A retry of an accepted submit gets its job back before any limit applies.
        prior = await services.store.read(
            lambda c: repo.find_idempotent(c, tenant, idempotency_key)
        )
        if prior is not None:
            if prior.request_hash != body_hash:
                raise ConflictError(_IDEMPOTENCY_CONFLICT.format(job_id=prior.id))
            response.status_code = status.HTTP_200_OK
            response.headers["Location"] = f"/jobs/{prior.id}"
            return await _load_job(services, tenant, prior.id, with_agents=False)
    _admit_submit(services, tenant)
    try:
        graph = await asyncio.to_thread(
            functools.partial(
                validate_graph,
                spec,
                max_agents=settings.max_agents_per_job,
                max_map_items=settings.max_map_items,
                max_map_items_per_job=settings.max_map_items_per_job,
            )
        )
    except GraphValidationError as exc:
        raise UnprocessableError(exc.detail()) from None
    job_id = new_job_id()
    model = spec.model or settings.default_model
    resolved = spec.resolved_agents()
    _check_routes(services, resolved, model)
    if spec.budget_usd is not None:
        _check_prices(services, resolved, model)
    await asyncio.to_thread(_check_prompt_sizes, spec, graph, resolved, settings.max_prompt_chars)
    _check_chunk_windows(services, spec, graph, resolved, model)
    spec_json = await asyncio.to_thread(_storable_json, spec)
    new = repo.new_job(
        job_id=job_id,
        tenant=tenant,
        name=spec.name,
        model=model,
        agents=[(a.id, a.model or model, a.depends_on) for a in resolved],
        failure_policy=str(spec.failure_policy),
        max_concurrency=spec.max_concurrency,
        budget_usd=spec.budget_usd,
        spec_json=spec_json,
        metadata=spec.metadata,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        map_nodes=graph.maps.keys(),
    )
    try:
        stored_id, created = await services.store.write(
            repo.create_job(new, max_active=settings.tenant_max_active_jobs)
        )
    except repo.IdempotencyConflictError as exc:
        raise ConflictError(_IDEMPOTENCY_CONFLICT.format(job_id=exc.job_id)) from None
    except repo.TooManyActiveJobsError as exc:
        raise TooManyRequestsError(
            f"this tenant already has {exc.active} jobs queued or running (the limit is "
            f"{exc.limit}); submit again when one has finished",
            retry_after_s=5,
        ) from None
    if created:
        services.scheduler.submit(stored_id, spec, graph, tenant=tenant, model=model)
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/jobs/{stored_id}"
    return await _load_job(services, tenant, stored_id, with_agents=False)


@router.get("", response_model=JobPage)
async def list_jobs(
    services: ServicesDep,
    tenant: TenantDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=26, pattern=r"^[0-9a-hjkmnp-tv-z]{26}$")] = None,
) -> JobPage:
    """Jobs, newest first. Follow `next_cursor` for older pages."""
    rows = await services.store.read(
        lambda c: repo.list_jobs(
            c,
            tenant=tenant,
            status=str(status_) if status_ else None,
            limit=limit + 1,
            before=cursor,
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage(
        data=[
            JobListItem(
                id=r.id,
                name=r.name,
                status=r.status,
                model=r.model,
                agents_total=r.agents_total,
                metadata=repo.loads(r.metadata_json, {}),
                error=r.error,
                created_at=r.created_at,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in rows
        ],
        next_cursor=rows[-1].id if more and rows else None,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
async def get_job(
    job_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    agents: Annotated[bool, Query(description="Include one summary row per agent.")] = True,
) -> JobPublic:
    """Status, counts by agent status, usage, cost, timestamps and the agents."""
    return await _load_job(services, tenant, job_id, with_agents=agents)


@router.get("/{job_id}/agents", response_model=AgentPage, responses=_ERRORS)
async def list_agents(
    job_id: str,
    services: ServicesDep,
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
    after = None
    if cursor is not None:
        position, sub = cursor.split(".")
        after = (int(position), int(sub))

    def read(conn: Any) -> list[Any] | None:
        if repo.get_job(conn, job_id, tenant) is None:
            return None
        return repo.list_agents(
            conn,
            job_id,
            status=str(status_) if status_ else None,
            kind=str(kind) if kind else None,
            parent=parent,
            limit=limit + 1,
            after=after,
        )

    rows = await services.store.read(read)
    if rows is None:
        raise NotFoundError(JOB_NOT_FOUND)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return AgentPage(
        data=[_agent_summary(r) for r in rows],
        next_cursor=f"{last.position}.{last.sub_order}" if more and last is not None else None,
    )


@router.get("/{job_id}/agents/{agent_id}", response_model=AgentDetail, responses=_ERRORS)
async def get_agent(
    job_id: str, agent_id: str, services: ServicesDep, tenant: TenantDep
) -> AgentDetail:
    """One agent in full: the prompt as sent, output, usage, cost, attempts, retries."""

    def read(conn: Any) -> tuple[Any, Any, list[dict[str, Any]]]:
        job = repo.get_job(conn, job_id, tenant)
        if job is None:
            return None, None, []
        row = repo.get_agent(conn, job_id, agent_id)
        return job, row, repo.agent_retries(conn, job_id, agent_id) if row is not None else []

    job, row, retries = await services.store.read(read)
    if job is None:
        raise NotFoundError(JOB_NOT_FOUND)
    if row is None:
        raise NotFoundError("agent not found in this job")
    usage = (
        Usage(
            prompt_tokens=row.prompt_tokens or 0,
            completion_tokens=row.completion_tokens or 0,
            total_tokens=row.total_tokens or 0,
        )
        if row.total_tokens is not None
        else None
    )
    return AgentDetail(
        job_id=row.job_id,
        id=row.agent_id,
        kind=row.kind,
        parent=row.parent_id,
        item=repo.loads(row.item_json, None),
        status=row.status,
        model=row.model,
        depends_on=repo.loads(row.depends_on_json, []),
        system_prompt=row.system_prompt,
        prompt=row.prompt,
        output=row.output,
        finish_reason=row.finish_reason,
        usage=usage,
        cost_usd=row.cost_usd,
        attempts=row.attempts,
        rate_limited=row.rate_limited,
        latency_ms=row.latency_ms,
        last_error=row.last_error,
        retries=[RetryRecord.model_validate(r) for r in retries],
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


@router.get("/{job_id}/results", response_model=JobResults, responses=_ERRORS)
async def get_results(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobResults:
    """Outputs of the completed agents, by agent id (partial while the job runs)."""

    def read(conn: Any) -> tuple[Any, list[tuple[str, str]]] | None:
        row = repo.get_job(conn, job_id, tenant)
        if row is None:
            return None
        return row, repo.completed_outputs(conn, job_id)

    found = await services.store.read(read)
    if found is None:
        raise NotFoundError(JOB_NOT_FOUND)
    row, outputs = found
    return JobResults(
        job_id=job_id,
        status=row.status,
        complete=len(outputs) == row.agents_total,
        results=dict(outputs),
    )


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CancelAccepted,
    responses={**_ERRORS, 409: {"description": "The job has already finished."}},
)
async def cancel_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> CancelAccepted:
    """Stop pending agents and abort in-flight calls; the job ends `cancelled`."""
    try:
        current = await services.store.write(repo.request_cancel(job_id, tenant))
    except repo.JobNotFoundError:
        raise NotFoundError(JOB_NOT_FOUND) from None
    if JobStatus(current).finished:
        raise ConflictError(f"job already finished ({current}); nothing to cancel")
    await services.scheduler.cancel(job_id)
    return CancelAccepted(id=job_id, status=current, detail="cancellation requested")


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 409: {"description": "The job is still queued or running."}},
)
async def delete_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """Remove a finished job, its agents and its events."""
    try:
        await services.store.write(repo.delete_job(job_id, tenant))
    except repo.JobNotFoundError:
        raise NotFoundError(JOB_NOT_FOUND) from None
    except repo.JobStillRunningError as exc:
        raise ConflictError(
            f"job is {exc.status}; cancel it first (POST /jobs/{job_id}/cancel), then delete"
        ) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)
