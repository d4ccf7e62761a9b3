"""Dependencies shared by routes: the long-lived services built in the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends, Request

from app.api.auth import Authenticator
from app.config import Settings
from app.events.bus import EventBus
from app.events.window import EventWindows
from app.jobs.admission import Admission
from app.jobs.service import JobsService
from app.metrics import Metrics
from app.scheduler.scheduler import Scheduler
from app.store.store import Store
from app.upstream.pool import UpstreamPool


@dataclass
class Services:
    settings: Settings
    store: Store
    bus: EventBus
    scheduler: Scheduler
    upstreams: UpstreamPool
    upstream_label: str
    metrics: Metrics
    auth: Authenticator
    # The recent events of the jobs followed here, shared by their SSE readers.
    event_windows: EventWindows = field(default_factory=EventWindows)
    # GET /upstream: one check at a time, its answer reused briefly (time, answer).
    upstream_check_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    upstream_check_cache: list[tuple[float, Any]] = field(default_factory=list)

    @cached_property
    def jobs(self) -> JobsService:
        """The jobs feature, built on first use (it lives as long as these services)."""
        return JobsService(self.store, self.scheduler, Admission(self.settings, self.upstreams))


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_jobs(request: Request) -> JobsService:
    return get_services(request).jobs


JobsDep = Annotated[JobsService, Depends(get_jobs)]
