"""Dependencies shared by routes: the long-lived services built in the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from app.api.auth import Authenticator
from app.config import Settings
from app.events.bus import EventBus
from app.metrics import Metrics
from app.scheduler.limits import TokenBucket
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
    # Per tenant: a bucket of submits (rate limit on POST /jobs).
    submit_buckets: dict[str, TokenBucket] = field(default_factory=dict)
    # GET /upstream: one check at a time, its answer reused briefly (time, answer).
    upstream_check_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    upstream_check_cache: list[tuple[float, Any]] = field(default_factory=list)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
