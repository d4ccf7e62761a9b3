"""Fair sharing: a small job submitted after a huge one is not stuck behind its backlog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Settings
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A small global limit makes it the bottleneck both jobs compete for.
    return make_settings(tmp_path, global_concurrency=8, model_concurrency_initial=8)


@pytest.fixture
async def service(settings: Settings, fake_upstream: FakeUpstream) -> AsyncIterator[Service]:
    async for svc in start_service(settings):
        yield svc


async def test_small_job_is_served_while_a_huge_job_has_a_backlog(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.01
    big = await service.submit(
        {
            "max_concurrency": 1000,
            "agents": [{"id": f"b{i}", "task": f"big {i}"} for i in range(1500)],
        }
    )
    small = await service.submit(
        {"agents": [{"id": f"s{i}", "task": f"small {i}"} for i in range(6)]}
    )
    done = await service.wait(small["id"], timeout=30)
    assert done["status"] == "completed"
    progress = (await service.client.get(f"/jobs/{big['id']}", params={"agents": "false"})).json()
    # Taking turns, the small job's 6 calls went out within a few rounds of the big job's:
    # the big one is nowhere near done when the small one has finished.
    assert progress["status"] == "running"
    assert progress["counts"]["completed"] < 200, progress["counts"]
    await service.client.post(f"/jobs/{big['id']}/cancel")
    assert (await service.wait(big["id"], timeout=10))["status"] == "cancelled"
