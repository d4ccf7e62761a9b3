"""Metrics: one job's figures as JSON, and the whole service for Prometheus."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import ServicesDep
from app.api.jobs import JOB_NOT_FOUND
from app.api.schemas import AgentCounts, JobMetrics, LatencyStats, Usage
from app.engine.lifecycle import JobStatus
from app.errors import NotFoundError
from app.metrics import OTHER_MODEL
from app.store import repository as repo
from app.store.models import utcnow

router = APIRouter(tags=["metrics"])


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


@router.get(
    "/jobs/{job_id}/metrics",
    response_model=JobMetrics,
    responses={**AUTH_RESPONSES, 404: {"description": "No such job."}},
)
async def job_metrics(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobMetrics:
    """Totals by status, tokens, cost, call latency, retries, rate-limited calls, wall time
    and throughput of one job."""

    def read(conn: Any) -> tuple[Any, repo.JobTotals, repo.CallStats] | None:
        row = repo.get_job(conn, job_id, tenant)
        if row is None:
            return None
        return row, repo.job_totals(conn, job_id), repo.call_stats(conn, job_id)

    found = await services.store.read(read)
    if found is None:
        raise NotFoundError(JOB_NOT_FOUND)
    row, totals, calls = found
    wall: float | None = None
    if row.started_at is not None:
        end = row.finished_at or utcnow()
        wall = max((end - row.started_at).total_seconds(), 0.0)
    completed = totals.counts.get("completed", 0)
    return JobMetrics(
        job_id=job_id,
        status=row.status,
        counts=AgentCounts(**totals.counts, total=sum(totals.counts.values())),
        usage=Usage(
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            total_tokens=totals.total_tokens,
        ),
        cost_usd=totals.cost_usd,
        latency=latency_stats(calls.latencies_ms),
        calls=calls.attempts,
        retries=calls.attempts - calls.agents_called,
        rate_limited=calls.rate_limited,
        wall_time_s=None if wall is None else round(wall, 3),
        agents_per_second=round(completed / wall, 3) if wall else None,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """The service's metrics in Prometheus text format."""
    m = services.metrics
    counts = await services.store.read(repo.job_counts_by_status)
    for status in JobStatus:
        m.jobs.labels(str(status)).set(counts.get(str(status), 0))
    others = [0.0, 0.0, 0.0]  # models not in the registry, summed under one label
    for name, gate in services.scheduler.gates.models.items():
        snap = gate.concurrency.snapshot()
        if m.model_label(name) != name:
            others[0] += snap.in_flight
            others[1] = max(others[1], snap.limit)
            others[2] += snap.waiting
            m.other_models_seen = True
            continue
        m.in_flight.labels(name).set(snap.in_flight)
        m.concurrency_limit.labels(name).set(snap.limit)
        m.waiting.labels(name).set(snap.waiting)
    # Once shown, the series stay current (zeros once those models' gates are dropped).
    if m.other_models_seen:
        m.in_flight.labels(OTHER_MODEL).set(others[0])
        m.concurrency_limit.labels(OTHER_MODEL).set(others[1])
        m.waiting.labels(OTHER_MODEL).set(others[2])
    m.store_pending.set(services.store.writer.pending)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
