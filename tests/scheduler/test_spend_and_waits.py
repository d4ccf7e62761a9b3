"""Spend is an upper bound (attempts whose answer never arrived count at an estimate), and
waiting is not failing (429 and 503 are bounded by rate_limit_wait_s, attempts cut off by a
restart never count against max_retries). Upstream faked at the transport."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from app.config import Settings
from app.engine.attempts import estimate_attempt
from app.scheduler import agent_call
from app.upstream.registry import BUILTIN_MODELS
from tests.helpers.service import FakeUpstream, Service, start_service


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry loop's sleeps, made instant; the delays it asked for are kept."""
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    monkeypatch.setattr(agent_call, "sleep", sleep)
    return delays


def too_many_requests(retry_after: str | None = "1") -> httpx2.Response:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    return httpx2.Response(429, json={"error": {"message": "slow down"}}, headers=headers)


async def agent(service: Service, job_id: str, agent_id: str) -> dict[str, Any]:
    resp = await service.client.get(f"/jobs/{job_id}/agents/{agent_id}")
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


async def test_a_15_second_429_storm_fails_no_agent_with_default_retries(
    settings: Settings, fake_upstream: FakeUpstream, slept: list[float]
) -> None:
    """Every call for 15 s of (simulated) time answers 429 with Retry-After 1: each agent
    is told to wait about 15 times, far more than max_retries (5), and still completes."""
    settings = settings.model_copy(update={"retry_after_cap_s": 60.0})
    storm: dict[str, int] = {}

    def script(body: dict[str, Any], _n: int) -> httpx2.Response | None:
        prompt = body["messages"][-1]["content"]
        storm[prompt] = storm.get(prompt, 0) + 1
        return too_many_requests("1") if storm[prompt] <= 15 else None

    fake_upstream.script = script
    async for service in start_service(settings):
        job = await service.submit(
            {"agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(10)]}
        )
        done = await service.wait(job["id"], timeout=60)
        assert done["status"] == "completed", done
        assert done["counts"]["failed"] == 0
        a0 = await agent(service, job["id"], "a0")
        assert a0["attempts"] == 16 and a0["rate_limited"] == 15
        assert a0["failed_attempts"] == 0
        assert 15.0 <= a0["waited_s"] < 17.0
        metrics = (await service.client.get(f"/jobs/{job['id']}/metrics")).json()
        assert metrics["calls"] == 160 and metrics["rate_limited"] == 150
    assert sum(slept) >= 150  # the Retry-After was honoured, not skipped


async def test_waiting_past_rate_limit_wait_s_fails_the_agent_saying_so(
    settings: Settings, fake_upstream: FakeUpstream, slept: list[float]
) -> None:
    settings = settings.model_copy(update={"retry_after_cap_s": 60.0})
    fake_upstream.script = lambda body, n: too_many_requests("2")
    async for service in start_service(settings):
        job = await service.submit(
            {"rate_limit_wait_s": 5, "max_retries": 20, "agents": [{"id": "a", "task": "x"}]}
        )
        done = await service.wait(job["id"])
        assert done["status"] == "failed"
        a = await agent(service, job["id"], "a")
    # Waited 2 + 2 s; 2 more would pass 5 s.
    assert a["attempts"] == 3 and a["failed_attempts"] == 0
    assert "gave up waiting" in a["last_error"]
    assert "rate_limit_wait_s (5 s)" in a["last_error"] and "slow down" in a["last_error"]
    assert len(slept) == 2


async def test_a_503_is_waited_out_without_using_up_max_retries(
    service: Service, fake_upstream: FakeUpstream, slept: list[float]
) -> None:
    def script(body: dict[str, Any], n: int) -> httpx2.Response | None:
        if n <= 3:
            return httpx2.Response(503, json={"error": {"message": "overloaded"}})
        return None

    fake_upstream.script = script
    job = await service.submit({"max_retries": 0, "agents": [{"id": "a", "task": "x"}]})
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    a = await agent(service, job["id"], "a")
    assert a["attempts"] == 4 and a["failed_attempts"] == 0
    assert {r["reason"] for r in a["retries"]} == {"server_error"}
    assert "overloaded (503)" in a["retries"][0]["error"]


async def test_an_agent_interrupted_by_three_restarts_still_gets_its_real_attempts(
    settings: Settings, fake_upstream: FakeUpstream
) -> None:
    """max_retries 2: three calls cut off by restarts (the service stopped with them in
    flight), then the upstream fails every call: the agent still makes 3 real attempts."""
    settings = settings.model_copy(update={"shutdown_grace_s": 0.01})
    calls = {"n": 0}

    async def script(body: dict[str, Any], _n: int) -> httpx2.Response:
        calls["n"] += 1
        if calls["n"] <= 3:
            await asyncio.sleep(30)  # in flight when the service stops
        return httpx2.Response(500, json={"error": {"message": "boom"}})

    fake_upstream.script = script
    body = {"max_retries": 2, "agents": [{"id": "a", "task": "x", "max_tokens": 100}]}
    job_id = ""
    for restart in range(3):
        async for service in start_service(settings):
            if not job_id:
                job_id = (await service.submit(body))["id"]
            async with asyncio.timeout(10):
                while calls["n"] < restart + 1:
                    await asyncio.sleep(0.01)
    async for service in start_service(settings):
        done = await service.wait(job_id)
        assert done["status"] == "failed"
        a = await agent(service, job_id, "a")
        metrics = (await service.client.get(f"/jobs/{job_id}/metrics")).json()
    assert calls["n"] == 6
    assert a["attempts"] == 6 and a["failed_attempts"] == 3
    assert a["last_error"].startswith("gave up after 3 attempt(s)")
    # The three cut-off calls may have been paid for: each counts at its estimate.
    one = estimate_attempt(None, "x", 100, default_completion_tokens=4096)
    assert a["usage"]["estimated_tokens"] == 3 * one.total_tokens
    assert a["usage"]["completion_tokens"] == 300
    assert a["usage_estimated"] is True
    price = BUILTIN_MODELS["kimi-k2.5"]
    expected = 3 * (price.cost(one.prompt_tokens, one.completion_tokens) or 0)
    assert a["estimated_cost_usd"] == pytest.approx(expected)
    assert done["usage_estimated"] is True
    assert done["estimated_cost_usd"] == pytest.approx(expected)
    assert done["cost_usd"] == pytest.approx(expected)
    assert metrics["calls"] == 6


async def test_a_timed_out_or_dropped_call_counts_at_its_estimate(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def script(body: dict[str, Any], n: int) -> httpx2.Response | None:
        if n == 1:
            raise httpx2.ReadTimeout("read timed out")
        if n == 2:
            raise httpx2.RemoteProtocolError("peer closed connection")
        return None

    fake_upstream.script = script
    job = await service.submit({"agents": [{"id": "a", "task": "x", "max_tokens": 50}]})
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    a = await agent(service, job["id"], "a")
    one = estimate_attempt(None, "x", 50, default_completion_tokens=4096)
    assert a["usage"]["estimated_tokens"] == 2 * one.total_tokens
    # The answer's own usage (5 completion tokens) plus the two estimates.
    assert a["usage"]["completion_tokens"] == 5 + 100
    assert a["usage_estimated"] is True and done["usage_estimated"] is True
    assert a["failed_attempts"] == 2


async def test_a_refused_connection_is_no_call_and_costs_nothing(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def script(body: dict[str, Any], n: int) -> httpx2.Response | None:
        if n == 1:
            raise httpx2.ConnectError("connection refused")
        return None

    fake_upstream.script = script
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    a = await agent(service, job["id"], "a")
    assert a["attempts"] == 2
    assert a["usage_estimated"] is False and a["usage"]["estimated_tokens"] == 0
    metrics = (await service.client.get(f"/jobs/{job['id']}/metrics")).json()
    assert metrics["calls"] == 1


async def test_estimates_count_against_the_budget(
    settings: Settings, fake_upstream: FakeUpstream
) -> None:
    """A call cut off by a restart is estimated at its whole answer allowance: with a
    budget below that, the resumed run starts nothing more."""
    settings = settings.model_copy(update={"shutdown_grace_s": 0.01})
    calls = {"n": 0}

    async def script(body: dict[str, Any], _n: int) -> httpx2.Response | None:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(30)
        return None

    fake_upstream.script = script
    body = {
        "budget_usd": 0.001,
        "max_concurrency": 1,
        "agents": [
            {"id": "a", "task": "x", "max_tokens": 100_000},
            {"id": "b", "task": "y"},
        ],
    }
    async for service in start_service(settings):
        job_id = (await service.submit(body))["id"]
        async with asyncio.timeout(10):
            while calls["n"] < 1:
                await asyncio.sleep(0.01)
    async for service in start_service(settings):
        done = await service.wait(job_id)
    assert done["status"] == "cancelled"
    assert "budget" in (done["error"] or "")
    assert done["usage_estimated"] is True and done["cost_usd"] > 0.001
    assert calls["n"] == 1  # nothing was started after the restart


async def test_a_call_cancelled_in_flight_counts_at_its_estimate(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 30
    job = await service.submit({"agents": [{"id": "a", "task": "x", "max_tokens": 10}]})
    async with asyncio.timeout(10):
        while fake_upstream.in_flight < 1:
            await asyncio.sleep(0.01)
    assert (await service.client.post(f"/jobs/{job['id']}/cancel")).status_code == 202
    done = await service.wait(job["id"])
    assert done["status"] == "cancelled"
    a = await agent(service, job["id"], "a")
    one = estimate_attempt(None, "x", 10, default_completion_tokens=4096)
    assert a["status"] == "cancelled" and a["attempts"] == 1
    assert a["usage"]["total_tokens"] == a["usage"]["estimated_tokens"] == one.total_tokens
    assert done["usage_estimated"] is True and done["usage"]["estimated_tokens"] > 0


async def test_a_503s_retry_after_is_honoured(
    settings: Settings, fake_upstream: FakeUpstream, slept: list[float]
) -> None:
    settings = settings.model_copy(update={"retry_after_cap_s": 60.0})

    def script(body: dict[str, Any], n: int) -> httpx2.Response | None:
        if n == 1:
            return httpx2.Response(
                503, json={"error": {"message": "overloaded"}}, headers={"retry-after": "3"}
            )
        return None

    fake_upstream.script = script
    async for service in start_service(settings):
        job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
        assert (await service.wait(job["id"]))["status"] == "completed"
        a = await agent(service, job["id"], "a")
    assert 3.0 <= slept[0] <= 3.3
    assert 3.0 <= a["waited_s"] <= 3.3 and a["failed_attempts"] == 0
