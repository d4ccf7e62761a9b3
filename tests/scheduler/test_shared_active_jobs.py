"""The per-tenant active-job limit across two API processes on one PostgreSQL database
(two in-process services, each with its own writer): with the limits shared over Redis,
parallel submits to both cannot slip under the limit together (without, 4 of 20 parallel
submits got in under a limit of 2 here: each writer counted before the other inserted)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from tests.helpers.redis import REDIS_URL
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service

LIMIT = 2
running = asynccontextmanager(start_service)


async def submits_accepted(tmp_path: Path, postgres_url: str, redis: dict[str, str]) -> int:
    settings = make_settings(
        tmp_path,
        database_url=postgres_url,
        tenant_max_active_jobs=LIMIT,
        tenant_submits_per_s=1000,
        shutdown_grace_s=0,
        **redis,
    )
    async with AsyncExitStack() as stack:
        services: list[Service] = []
        for _ in range(2):
            services.append(await stack.enter_async_context(running(settings)))
        graph = {"agents": [{"id": "a", "task": "wait"}]}
        answers = await asyncio.gather(
            *(services[i % 2].client.post("/jobs", json=graph) for i in range(20))
        )
        codes = sorted(a.status_code for a in answers)
        assert set(codes) <= {201, 429}, codes
        return codes.count(201)


@pytest.fixture(autouse=True)
def patient_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test is about the count being atomic, not about a slow Redis: on a loaded
    machine a command may exceed the 1 s after which the limits fall back to each process's
    own (which is what lets more than the limit in)."""
    from app.scheduler import shared_limits

    monkeypatch.setattr(shared_limits, "SOCKET_TIMEOUT_S", 10.0)


@pytest.fixture
def slow_upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.latency_s = 30  # every job stays active while the submits arrive
    return fake_upstream


@pytest.mark.usefixtures("slow_upstream")
async def test_the_active_job_limit_holds_across_api_processes(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    accepted = await submits_accepted(
        tmp_path, postgres_url, {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix}
    )
    assert accepted == LIMIT
