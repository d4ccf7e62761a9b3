"""The FastAPI application: builds every long-lived resource in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from app.api import health, metrics_routes, upstream
from app.api.auth import Authenticator
from app.api.deps import Services
from app.api.limits import BodySizeLimit
from app.config import Environment, Settings, get_settings
from app.errors import install_handlers
from app.events.bus import EventBus
from app.jobs import router as jobs
from app.jobs import stream
from app.logging_setup import configure_logging, log_events
from app.metrics import Metrics
from app.scheduler.scheduler import Scheduler
from app.store import migrate
from app.store.store import Store
from app.upstream.local_simulator import LocalSimulator
from app.upstream.pool import UpstreamPool
from app.upstream.registry import ModelRegistry

log = logging.getLogger("app")

# On SIGTERM, calls in flight get this long to finish before they are left to resume.
SHUTDOWN_GRACE_S = 10.0


class NoUpstreamError(RuntimeError):
    pass


class InsecureStartError(RuntimeError):
    """Starting as configured would expose the API without authentication."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)
        if settings.migrate_on_start:
            await anyio.to_thread.run_sync(migrate.upgrade, settings.database_url)
        registry = ModelRegistry.load(settings.models_file)
        simulator: LocalSimulator | None = None
        base_url = settings.upstream_base_url
        api_key = (
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        )
        if UpstreamPool.nothing_configured(settings, registry):
            if settings.environment is Environment.production:
                raise NoUpstreamError(
                    "SWARM_ENVIRONMENT=production but no upstream is configured: set "
                    "SWARM_UPSTREAM_BASE_URL (the simulator is never used in production)"
                )
            simulator = LocalSimulator(
                port=settings.simulator_port, latency_ms=settings.simulator_latency_ms
            )
            base_url = await simulator.start()
        upstreams = UpstreamPool(
            settings, registry, default_base_url=base_url, default_api_key=api_key
        )
        label = upstreams.describe()
        if simulator is not None:
            label = f"simulator at {base_url}"
        bus = EventBus(subscriber_queue_size=settings.sse_subscriber_queue)
        metrics = Metrics(known_models=registry.names())
        bus.add_listener(metrics.observe_events)
        bus.add_listener(log_events)
        store = Store(settings.database_url, bus, batch_max=settings.write_batch_max)
        await store.start()
        auth = Authenticator(settings, store)
        await auth.refresh(force=True)
        problem = auth.startup_problem()
        if problem is not None:
            await store.close()
            await upstreams.aclose()
            if simulator is not None:
                await simulator.stop()
            raise InsecureStartError(problem)
        if auth.has_keys:
            log.info("%s", auth.describe())
        else:
            log.warning("%s", auth.describe())
        scheduler = Scheduler(settings=settings, store=store, upstreams=upstreams, metrics=metrics)
        app.state.services = Services(
            settings=settings,
            store=store,
            bus=bus,
            scheduler=scheduler,
            upstreams=upstreams,
            upstream_label=label,
            metrics=metrics,
            auth=auth,
        )
        await scheduler.start()
        log.info("ready: database %s, upstream %s", _safe_db(settings.database_url), label)
        try:
            yield
        finally:
            await scheduler.stop(SHUTDOWN_GRACE_S)
            await store.close()
            await upstreams.aclose()
            if simulator is not None:
                await simulator.stop()

    app = FastAPI(
        title="Swarm job service",
        version="0.1.0",
        summary="Runs DAGs of LLM sub-agents as durable background jobs.",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(stream.router)
    app.include_router(metrics_routes.router)
    app.include_router(health.router)
    app.include_router(upstream.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


def _safe_db(url: str) -> str:
    """The database URL without its password, for the log."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


app = create_app()
