"""One job over two providers, each model priced by the registry; declared rpm honoured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pytest_httpx2 import HTTPXMock

from app.config import Settings
from tests.helpers.service import UPSTREAM, FakeUpstream, Service, make_settings, start_service

OTHER = "http://other-provider.test/v1"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text(
        "providers:\n"
        f"  other: {{base_url: '{OTHER}', api_key_env: OTHER_PROVIDER_KEY}}\n"
        "  keyless: {base_url: 'http://keyless.test/v1', api_key_env: SWARM_TEST_UNSET_KEY}\n"
        "models:\n"
        "  other-model: {provider: other, upstream_name: vendor/other-7b,"
        " input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}\n"
        "  throttled: {rpm: 30}\n"
        "  stranded: {provider: keyless}\n"
    )
    monkeypatch.setenv("OTHER_PROVIDER_KEY", "sk-other-provider-key-000000")
    return make_settings(tmp_path, models_file=str(models))


@pytest.fixture
def other_upstream(httpx2_mock: HTTPXMock) -> FakeUpstream:
    fake = FakeUpstream()
    httpx2_mock.add_callback(
        fake, url=f"{OTHER}/chat/completions", is_reusable=True, is_optional=True
    )
    return fake


@pytest.fixture
async def service(
    settings: Settings, fake_upstream: FakeUpstream, other_upstream: FakeUpstream
) -> AsyncIterator[Service]:
    async for svc in start_service(settings):
        yield svc


async def test_one_job_mixes_models_on_different_providers(
    service: Service,
    fake_upstream: FakeUpstream,
    other_upstream: FakeUpstream,
    httpx2_mock: HTTPXMock,
) -> None:
    body = {
        "model": "deepseek-v3.2",
        "agents": [
            {"id": "a", "task": "on the default upstream"},
            {"id": "b", "task": "on the other provider", "model": "other-model"},
            {"id": "c", "task": "merge", "depends_on": ["a", "b"]},
        ],
    }
    job = await service.submit(body)
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    assert [c["model"] for c in other_upstream.calls] == ["vendor/other-7b"]
    assert sorted(c["model"] for c in fake_upstream.calls) == ["deepseek-v3.2", "deepseek-v3.2"]
    # Each provider got its own key.
    other_req = httpx2_mock.get_requests(url=f"{OTHER}/chat/completions")[0]
    assert other_req.headers["authorization"] == "Bearer sk-other-provider-key-000000"
    default_req = httpx2_mock.get_requests(url=f"{UPSTREAM}/chat/completions")[0]
    assert "sk-other" not in default_req.headers["authorization"]
    # Cost per agent from that agent's model's prices.
    b = (await service.client.get(f"/jobs/{job['id']}/agents/b")).json()
    assert b["model"] == "other-model"
    usage = b["usage"]
    expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert b["cost_usd"] == pytest.approx(expected)
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    ua = a["usage"]
    assert a["cost_usd"] == pytest.approx(
        (ua["prompt_tokens"] * 0.28 + ua["completion_tokens"] * 0.42) / 1e6
    )
    assert done["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in done["agents"]))


async def test_declared_rpm_is_honoured_before_the_upstream_says_429(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "model": "throttled",
        "max_concurrency": 100,
        "agents": [{"id": f"t{i}", "task": f"item {i}"} for i in range(40)],
    }
    started: list[float] = []
    fake_upstream.script = lambda body, n: started.append(time.monotonic())
    job = await service.submit(body)
    # A bucket of one minute's worth (30 requests) goes out at once...
    deadline = time.monotonic() + 30
    while len(fake_upstream.calls) < 30 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(fake_upstream.calls) >= 30
    # ...and then it refills at 0.5 a second, however slowly this machine got there.
    await asyncio.sleep(1.0)
    refilled = 0.5 * (time.monotonic() - started[0])
    assert len(fake_upstream.calls) <= 30 + int(refilled) + 1 < 40
    await service.client.post(f"/jobs/{job['id']}/cancel")
    done = await service.wait(job["id"])
    assert done["counts"]["completed"] == len(fake_upstream.calls)


async def test_a_model_no_upstream_serves_is_refused_at_submit(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    resp = await service.client.post(
        "/jobs",
        json={"agents": [{"id": "a", "task": "x"}, {"id": "b", "task": "y", "model": "stranded"}]},
    )
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert detail[0]["loc"] == ["body", "agents", 1, "model"]
    assert "SWARM_TEST_UNSET_KEY" in detail[0]["msg"]
    assert (await service.client.get("/jobs")).json()["data"] == []
    assert fake_upstream.calls == []
