"""The per-tenant submit rate and the active-job check held across API processes over
the machine's real Redis (two Admission objects, as two API replicas would hold them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.config import Settings
from app.jobs.admission import Admission
from app.jobs.errors import TooManySubmits
from tests.helpers.redis import REDIS_URL


@pytest.fixture
async def replicas(redis_prefix: str) -> AsyncIterator[list[Admission]]:
    settings = Settings(
        redis_url=REDIS_URL, redis_key_prefix=redis_prefix, tenant_submits_per_s=1.0
    )
    both = [Admission(settings, upstreams=None) for _ in range(2)]  # type: ignore[arg-type]
    yield both
    for admission in both:
        assert admission.shared is not None
        await admission.shared.close()


async def test_the_submit_rate_holds_across_api_replicas(replicas: list[Admission]) -> None:
    first, second = replicas
    await first.check_submit("t1")
    await second.check_submit("t1")  # the burst is two seconds' worth: 2 in all
    with pytest.raises(TooManySubmits):
        await first.check_submit("t1")
    with pytest.raises(TooManySubmits):
        await second.check_submit("t1")
    await second.check_submit("t2")  # another tenant has its own bucket


async def test_one_replica_at_a_time_counts_a_tenants_active_jobs(
    replicas: list[Admission],
) -> None:
    inside = 0
    peak = 0

    async def submit(admission: Admission, tenant: str) -> None:
        nonlocal inside, peak
        async with admission.active_jobs_turn(tenant):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(submit(replicas[i % 2], "t1") for i in range(6)))
    assert peak == 1
