"""Retries, failure policies and budget, through the API with the upstream faked."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from tests.helpers.service import FakeUpstream, Service

PIPELINE = {
    "agents": [
        {"id": "a", "task": "first"},
        {"id": "b", "task": "second", "depends_on": ["a"]},
        {"id": "c", "task": "third", "depends_on": ["b"]},
        {"id": "side", "task": "independent"},
    ]
}


def fail_when(
    text: str,
    status: int,
    body: dict[str, Any] | None = None,
    times: int | None = None,
    headers: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    seen = {"n": 0}

    def script(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        if text not in req["messages"][-1]["content"]:
            return None
        seen["n"] += 1
        if times is not None and seen["n"] > times:
            return None
        return httpx2.Response(status, json=body or {"error": {"message": "boom"}}, headers=headers)

    return script


async def events_of(service: Service, job_id: str) -> list[dict[str, Any]]:
    from app.store import events as event_store

    store = service.app.state.services.store
    rows = await store.read(lambda c: event_store.events_after(c, job_id, 0, 10_000))
    return [{"seq": r.seq, "type": r.type, "agent_id": r.agent_id} for r in rows]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 408, 409])
async def test_retryable_statuses_are_retried_then_succeed(
    service: Service, fake_upstream: FakeUpstream, status: int
) -> None:
    fake_upstream.script = fail_when("first", status, times=2, headers={"retry-after-ms": "0"})
    job = await service.submit(PIPELINE)
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["attempts"] == 3
    assert a["rate_limited"] == (2 if status == 429 else 0)
    # Each retried attempt is recorded on the agent with its reason and delay.
    assert [r["attempt"] for r in a["retries"]] == [1, 2]
    expected = {429: "rate_limited", 408: "conflict", 409: "conflict"}.get(status, "server_error")
    assert {r["reason"] for r in a["retries"]} == {expected}
    assert all(r["delay_s"] >= 0 and str(status) in r["error"] for r in a["retries"])
    events = await events_of(service, job["id"])
    retrying = [e for e in events if e["type"] == "agent.retrying"]
    assert [e["agent_id"] for e in retrying] == ["a", "a"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(
    ("status", "code", "needle"),
    [
        (401, "invalid_api_key", "rejected the API key"),
        (403, None, "no access to model"),
        (404, "model_not_found", "does not know model"),
        (400, "context_length_exceeded", "too long for model"),
        (422, None, "refused the request"),
    ],
)
async def test_non_retryable_errors_fail_at_once_with_advice(
    service: Service, fake_upstream: FakeUpstream, status: int, code: str | None, needle: str
) -> None:
    body = {"error": {"message": "nope", "code": code}}
    fake_upstream.script = fail_when("first", status, body)
    job = await service.submit(PIPELINE)
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["status"] == "failed" and a["attempts"] == 1
    assert needle in a["last_error"]
    if status == 400:
        assert "'a'" in a["last_error"] and "262,144" in a["last_error"]
    by_id = {x["id"]: x["status"] for x in done["agents"]}
    # skip_dependents: b and c are skipped, the independent agent still ran.
    assert by_id == {"a": "failed", "b": "skipped", "c": "skipped", "side": "completed"}
    assert len(fake_upstream.calls_with("first")) == 1


async def test_exhausted_retries_fail_with_the_last_error(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_when("first", 500)
    body = {**PIPELINE, "max_retries": 2}
    job = await service.submit(body)
    await service.wait(job["id"])
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["attempts"] == 3
    assert "gave up after 3 attempt(s)" in a["last_error"] and "500" in a["last_error"]


async def test_dropped_connections_and_timeouts_are_retried(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    state = {"n": 0}

    def flaky(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        if "first" in req["messages"][-1]["content"]:
            state["n"] += 1
            if state["n"] == 1:
                raise httpx2.RemoteProtocolError("peer closed connection")
            if state["n"] == 2:
                raise httpx2.ReadTimeout("read timed out")
        return None

    fake_upstream.script = flaky
    job = await service.submit(PIPELINE)
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["attempts"] == 3


async def test_continue_policy_runs_dependents_with_the_failure_noted(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_when("first", 401)
    job = await service.submit({**PIPELINE, "failure_policy": "continue"})
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    by_id = {x["id"]: x["status"] for x in done["agents"]}
    assert by_id == {"a": "failed", "b": "completed", "c": "completed", "side": "completed"}
    b = (await service.client.get(f"/jobs/{job['id']}/agents/b")).json()
    assert "agent a failed" in b["prompt"]


async def test_fail_fast_cancels_the_rest(service: Service, fake_upstream: FakeUpstream) -> None:
    async def script(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        content = req["messages"][-1]["content"]
        if "first" in content:
            await asyncio.sleep(0.05)
            return httpx2.Response(401, json={"error": {"message": "bad key"}})
        if "independent" in content:
            await asyncio.sleep(3600)
        return None

    fake_upstream.script = script
    job = await service.submit({**PIPELINE, "failure_policy": "fail_fast"})
    done = await service.wait(job["id"], timeout=5)
    assert done["status"] == "failed"
    by_id = {x["id"]: x["status"] for x in done["agents"]}
    assert by_id == {"a": "failed", "b": "cancelled", "c": "cancelled", "side": "cancelled"}
    assert "fail_fast" in done["error"]
    assert fake_upstream.in_flight == 0


async def test_budget_stops_new_agents(service: Service, fake_upstream: FakeUpstream) -> None:
    # kimi-k2.5 costs $3/M output tokens; each fake call reports 5 output tokens and a few
    # prompt tokens, so every call costs more than this budget.
    body = {
        "budget_usd": 0.000001,
        "max_concurrency": 1,
        "agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(5)],
    }
    job = await service.submit(body)
    done = await service.wait(job["id"])
    assert done["status"] == "cancelled"
    assert done["counts"]["completed"] == 1 and done["counts"]["cancelled"] == 4
    assert "budget" in done["error"]
    assert len(fake_upstream.calls) == 1


async def test_unknown_model_price_gives_null_cost(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit({"model": "my-local-llama", "agents": [{"id": "a", "task": "x"}]})
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    assert done["cost_usd"] is None and done["cost_complete"] is False
    assert done["agents"][0]["cost_usd"] is None
    assert fake_upstream.calls[0]["model"] == "my-local-llama"


async def test_retry_after_is_waited_out(tmp_path: Any, fake_upstream: FakeUpstream) -> None:
    from tests.helpers.service import make_settings, start_service

    times: list[float] = []

    def limited(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        times.append(asyncio.get_running_loop().time())
        if len(times) == 1:
            return httpx2.Response(
                429, json={"error": {"message": "slow down"}}, headers={"retry-after-ms": "300"}
            )
        return None

    fake_upstream.script = limited
    settings = make_settings(tmp_path, retry_after_cap_s=60.0)
    async for svc in start_service(settings):
        job = await svc.submit({"agents": [{"id": "a", "task": "x"}]})
        assert (await svc.wait(job["id"]))["status"] == "completed"
        a = (await svc.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["retries"][0]["delay_s"] >= 0.3
    assert times[1] - times[0] >= 0.3
