"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: see which part failed."}},
)
async def readyz(services: ServicesDep, request: Request) -> JSONResponse:
    """Ready to take jobs: the database answers and takes writes, and the scheduler runs.
    With replicas (SWARM_ROLE=api|worker) the connection on which replicas notify each
    other must be up as well (`scheduler` reports it on an API replica, which runs no job)."""
    db_ok = await services.store.ping()
    unwritable = await services.store.writer.probe()
    sched_ok = services.scheduler.running
    listener = getattr(request.app.state, "listener", None)
    notified = listener is None or bool(listener.connected)
    problems = []
    if not db_ok:
        problems.append("database: it does not answer")
    if unwritable is not None:
        problems.append(f"database: it cannot be written: {unwritable}")
    if not sched_ok:
        problems.append("scheduler: it is not running")
    if not notified:
        problems.append("replicas: the connection on which they notify each other is down")
    sched_ok = sched_ok and notified
    body = Readiness(
        status="unavailable" if problems else "ok",
        database=db_ok,
        database_writable=unwritable is None,
        scheduler=sched_ok,
        upstream=services.upstream_label,
        problems=problems,
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=200 if body.status == "ok" else 503
    )
