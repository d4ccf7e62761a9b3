"""Metrics: one job's figures as JSON, and the whole service for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import JobsDep, ServicesDep
from app.engine.lifecycle import JobStatus
from app.jobs.schemas import JobMetrics
from app.metrics import OTHER_MODEL
from app.store.jobs import job_counts_by_status

router = APIRouter(tags=["metrics"])


@router.get(
    "/jobs/{job_id}/metrics",
    response_model=JobMetrics,
    responses={**AUTH_RESPONSES, 404: {"description": "No such job."}},
)
async def job_metrics(job_id: str, jobs: JobsDep, tenant: TenantDep) -> JobMetrics:
    """Totals by status, tokens, cost, call latency, retries, rate-limited calls, wall time
    and throughput of one job."""
    return await jobs.metrics(tenant, job_id)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """The service's metrics in Prometheus text format."""
    m = services.metrics
    counts = await services.store.read(job_counts_by_status)
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
    shared = services.scheduler.gates.shared
    if shared is not None:
        m.shared_limits_up.set(1 if shared.available else 0)
        m.shared_limits_workers.set(shared.live)
        m.shared_limits_fallbacks.set(shared.fallbacks)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
