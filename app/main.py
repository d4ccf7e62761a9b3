"""The FastAPI application: builds every long-lived resource in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import health, metrics_routes, upstream
from app.api.auth import Authenticator
from app.api.deps import Services
from app.api.limits import BodySizeLimit
from app.config import Environment, Role, Settings, get_settings
from app.errors import StartupRefused, install_handlers
from app.events.bus import EventBus, StoredEvent
from app.events.relay import EventRelay
from app.jobs import router as jobs
from app.jobs import stream
from app.logging_setup import configure_logging, log_events
from app.metrics import Metrics
from app.scheduler.leases import worker_name
from app.scheduler.scheduler import Scheduler
from app.store import events as event_store
from app.store import leases, migrate
from app.store import notify as pg
from app.store.store import Store
from app.telemetry import Telemetry
from app.telemetry import install as install_telemetry
from app.ui import routes as ui_routes
from app.upstream.local_simulator import LocalSimulator
from app.upstream.pool import UpstreamPool
from app.upstream.registry import ModelRegistry
from app.webhooks import router as webhook_routes
from app.webhooks.delivery import WebhookDeliverer

log = logging.getLogger("app")

# Event streams are ended by the lifespan's drain (each closes cleanly, after its last
# event); sse-starlette's own watcher would cancel them mid-response instead.
AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


class NoUpstreamError(StartupRefused):
    pass


class InsecureStartError(StartupRefused):
    """Starting as configured would expose the API without authentication."""


class RoleNeedsPostgresError(StartupRefused):
    """SWARM_ROLE=api|worker on SQLite: replicas share jobs through PostgreSQL only."""


# What a worker serves; every other path answers 404 saying where the API is.
WORKER_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class WorkerPathsOnly:
    """ASGI middleware of a worker replica: health and metrics only."""

    BODY = json.dumps(
        {
            "detail": "not served here: this replica is a worker (SWARM_ROLE=worker), which "
            "runs jobs and serves only /healthz, /readyz and /metrics; send API requests "
            "to an api replica"
        }
    ).encode()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in WORKER_PATHS:
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.BODY)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.BODY})


class StartupRefusalMessage:
    """ASGI middleware: a refused start-up is reported as its one sentence, not as the
    traceback Starlette hands the server (which would print it in 40 lines)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def clean_send(message: Message) -> None:
            # Sent from inside the handler of the exception that ended the start-up.
            refusal = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(refusal, StartupRefused):
                message = {**message, "message": str(refusal)}
            await send(message)

        await self.app(scope, receive, clean_send)


class SignalDrain:
    """Calls `on_signal` in the event loop the moment SIGINT or SIGTERM arrives, then hands
    the signal on to the server's own handler (uvicorn's, which starts its shutdown).

    uvicorn runs the lifespan's shutdown only once every HTTP connection has closed, so
    draining there would let calls start for as long as one slow client holds on.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]) -> None:
        self._loop = loop
        self._on_signal = on_signal
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (a test client's lifespan)
        for sig in self.SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):  # a server handles it: chain to it
                self._previous[sig] = previous
                signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to drain
            self._loop.call_soon_threadsafe(self._on_signal)
        previous = self._previous.get(signum)
        if previous is not None:
            previous(signum, frame)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Now, not in the lifespan: when uvicorn imports this module its own log lines are yet
    # to come, and they should come in the service's format.
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)
        role = settings.role
        if role is not Role.all and settings.is_sqlite:
            raise RoleNeedsPostgresError(
                f"SWARM_ROLE={role.value} needs PostgreSQL (SWARM_DATABASE_URL=postgresql://…): "
                "replicas share their jobs through it, and SQLite serves one process only "
                "(SWARM_ROLE=all)"
            )
        registry = ModelRegistry.load(settings.models_file)
        no_upstream = UpstreamPool.nothing_configured(settings, registry)
        if no_upstream and settings.environment is Environment.production:
            raise NoUpstreamError(
                "SWARM_ENVIRONMENT=production but no upstream is configured: set "
                "SWARM_UPSTREAM_BASE_URL (the simulator is never used in production)"
            )
        if settings.migrate_on_start:
            await anyio.to_thread.run_sync(migrate.upgrade, settings.database_url)
        bus = EventBus(subscriber_queue_size=settings.sse_subscriber_queue)
        store = Store(settings.database_url, bus, batch_max=settings.write_batch_max)
        await store.start()
        sender = worker_name(settings)
        if role is not Role.all:
            store.writer.share_with_replicas(sender)
            for engine in (store.write_engine, store.read_engine):
                leases.prepare_replica_sessions(engine, sender, settings.lease_s)
        auth = Authenticator(settings, store)
        try:
            await auth.refresh(force=True)
            problem = auth.startup_problem()
            if problem is not None:
                raise InsecureStartError(problem)
        except BaseException:
            await store.close()
            raise
        # Only now, when nothing can refuse the start any more.
        simulator: LocalSimulator | None = None
        base_url = settings.upstream_base_url
        api_key = (
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        )
        if no_upstream:
            simulator = LocalSimulator(
                port=settings.simulator_port,
                latency_ms=settings.simulator_latency_ms,
                banner=settings.log_format == "text",
            )
            try:
                base_url = await simulator.start()
            except BaseException:
                await store.close()
                raise
        upstreams = UpstreamPool(
            settings, registry, default_base_url=base_url, default_api_key=api_key
        )
        label = upstreams.describe()
        if simulator is not None:
            label = f"simulator at {base_url}"
        metrics = Metrics(known_models=registry.names())
        bus.add_listener(metrics.observe_events)
        bus.add_listener(log_events)
        if auth.has_keys:
            log.info("%s", auth.describe())
        else:
            log.warning("%s", auth.describe())
        # Traces and metrics over OTLP when an endpoint is configured (else nothing is).
        own_telemetry = Telemetry.from_env(settings)
        if own_telemetry is not None:
            install_telemetry(own_telemetry)
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
        listener: pg.PgListener | None = None
        relay: EventRelay | None = None
        if role is not Role.all:
            listener = pg.PgListener(settings.database_url, leases.session_name(sender))
            if scheduler.keeper is not None:
                listener.on(pg.JOBS_CHANNEL, scheduler.keeper.on_submit)
                listener.on(pg.CANCEL_CHANNEL, scheduler.keeper.on_cancel)
                listener.on_connect(scheduler.keeper.wake)
            if role is Role.api:
                relay = _relay(store, bus, sender)
                listener.on(pg.EVENTS_CHANNEL, relay.on_notification)
                listener.on_connect(relay.catch_up)
                await relay.start()
            await listener.start()
        app.state.listener = listener
        # Deliveries go out where events are written: the single process, or the workers.
        webhooks = WebhookDeliverer(settings, store) if role is not Role.api else None
        if webhooks is not None:
            await webhooks.start()
        stopping: asyncio.Task[None] | None = None

        def drain() -> None:
            """No new upstream call from now on; calls in flight get the grace period (from
            now, while the server waits for its connections); live event streams end."""
            nonlocal stopping
            if stopping is None:
                log.info("shutting down: no new upstream call starts")
                scheduler.drain()
                bus.close_subscribers()
                stopping = asyncio.create_task(scheduler.stop(settings.shutdown_grace_s))

        signals = SignalDrain(asyncio.get_running_loop(), drain)
        signals.install()
        log.info(
            "ready (role %s): database %s, upstream %s",
            role.value,
            _safe_db(settings.database_url),
            label,
        )
        try:
            yield
        finally:
            signals.uninstall()
            drain()
            assert stopping is not None
            await stopping
            if listener is not None:
                await listener.close()
            if relay is not None:
                await relay.close()
            if webhooks is not None:
                await webhooks.stop()
            await store.close()
            await upstreams.aclose()
            if simulator is not None:
                await simulator.stop()
            if own_telemetry is not None:
                install_telemetry(None)
                await asyncio.to_thread(own_telemetry.shutdown)

    # The docs pages load Swagger UI and ReDoc from this package, not from a CDN: they work
    # offline. The validator badge would call swagger.io: off.
    app = FastAPIOffline(
        title="Swarm job service",
        version="0.1.0",
        summary="Runs DAGs of LLM sub-agents as durable background jobs.",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},
    )
    install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(stream.router)
    app.include_router(webhook_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(health.router)
    app.include_router(upstream.router)
    app.include_router(ui_routes.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    if settings.role is Role.worker:
        app.add_middleware(WorkerPathsOnly)
    app.add_middleware(StartupRefusalMessage)
    return app


def _relay(store: Store, bus: EventBus, sender: str) -> EventRelay:
    """The live feed of events other replicas commit, read from the events table."""

    async def read_after(job_id: str, after: int, upto: int) -> list[StoredEvent]:
        return await store.read(
            functools.partial(
                event_store.events_after, job_id=job_id, after=after, limit=upto - after
            )
        )

    async def newest(job_ids: list[str]) -> dict[str, int]:
        return await store.read(lambda c: pg.newest_seqs(c, job_ids))

    return EventRelay(bus, sender=sender, read_after=read_after, newest_seqs=newest)


def _safe_db(url: str) -> str:
    """The database URL without its password, for the log."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


app = create_app()
