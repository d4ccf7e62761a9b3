"""The FastAPI application: builds every long-lived resource in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
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


class StartupRefused(RuntimeError):
    """Starting as configured would be wrong; the message says why and what to do."""


class NoUpstreamError(StartupRefused):
    pass


class InsecureStartError(StartupRefused):
    """Starting as configured would expose the API without authentication."""


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
        webhooks = WebhookDeliverer(settings, store)
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
        log.info("ready: database %s, upstream %s", _safe_db(settings.database_url), label)
        try:
            yield
        finally:
            signals.uninstall()
            drain()
            assert stopping is not None
            await stopping
            await webhooks.stop()
            await store.close()
            await upstreams.aclose()
            if simulator is not None:
                await simulator.stop()

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
    app.add_middleware(StartupRefusalMessage)
    return app


def _safe_db(url: str) -> str:
    """The database URL without its password, for the log."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


app = create_app()
