"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
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
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready to take jobs: the database answers and takes writes, and the scheduler runs."""
    db_ok = await services.store.ping()
    unwritable = await services.store.writer.probe()
    sched_ok = services.scheduler.running
    problems = []
    if not db_ok:
        problems.append("database: it does not answer")
    if unwritable is not None:
        problems.append(f"database: it cannot be written: {unwritable}")
    if not sched_ok:
        problems.append("scheduler: it is not running")
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
