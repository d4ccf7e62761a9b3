"""POST /jobs/{id}/retry in-process, the upstream faked at the transport: what runs again,
what is kept, the events, the counts and the refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2

from app.keys import create_key
from app.store import migrate
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service
from tests.helpers.sse import parse_lines

BROKEN = {"on": True}


def fail_bad(body: dict[str, Any], _n: int) -> httpx2.Response | None:
    """A non-retryable upstream error for every prompt mentioning BAD while BROKEN."""
    if BROKEN["on"] and "BAD" in body["messages"][-1]["content"]:
        return httpx2.Response(400, json={"error": {"message": "bad request", "type": "x"}})
    return None


def graph(policy: str = "skip_dependents") -> dict[str, Any]:
    return {
        "name": "retry-me",
        "failure_policy": policy,
        "max_retries": 0,
        "agents": [
            {"id": "ok1", "task": "fine one"},
            {"id": "ok2", "task": "fine two"},
            {"id": "bad", "task": "BAD one"},
            {"id": "after_bad", "task": "use {{bad.output}}", "depends_on": ["bad"]},
            {"id": "after_ok", "task": "use {{ok1.output}}", "depends_on": ["ok1"]},
        ],
    }


async def events(svc: Service, job_id: str) -> list[tuple[int, str]]:
    resp = await svc.client.get(f"/jobs/{job_id}/events")
    parsed, _ = parse_lines(resp.text.splitlines())
    return [(int(e.id or 0), e.event) for e in parsed]


async def test_retry_runs_only_the_failed_and_skipped_agents_again(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    BROKEN["on"] = True
    fake_upstream.script = fail_bad
    job = await service.submit(graph())
    job_id = job["id"]
    first = await service.wait(job_id)
    assert first["status"] == "failed"
    assert first["counts"]["failed"] == 1 and first["counts"]["skipped"] == 1
    calls_before = len(fake_upstream.calls)
    assert calls_before == 4  # ok1, ok2, bad, after_ok
    cost_before = first["usage"]["total_tokens"]

    BROKEN["on"] = False
    resp = await service.client.post(f"/jobs/{job_id}/retry")
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["agents_retried"] == 2 and answer["status"] == "running"
    again = await service.wait(job_id)
    assert again["status"] == "completed", again
    assert again["id"] == job_id and again["counts"]["completed"] == 5
    called = [fake_upstream.user_prompt(c) for c in fake_upstream.calls[calls_before:]]
    assert len(called) == 2
    assert called[0] == "BAD one" and called[1].startswith("use ")
    # Usage accumulates: the first run's spend stays counted.
    assert again["usage"]["total_tokens"] > cost_before
    bad = (await service.client.get(f"/jobs/{job_id}/agents/bad")).json()
    assert bad["attempts"] == 2  # the failed attempt of the first run is kept

    seen = await events(service, job_id)
    seqs = [s for s, _ in seen]
    assert seqs == list(range(1, len(seqs) + 1))  # one gap-free sequence
    kinds = [k for _, k in seen]
    failed_at = kinds.index("job.failed")
    assert kinds[failed_at + 1] == "job.retried"
    assert kinds[-1] == "job.completed"
    # The retried run's start is a start, not a resume after a restart.
    resp = await service.client.get(f"/jobs/{job_id}/events", params={"after": seqs[failed_at + 1]})
    parsed, _ = parse_lines(resp.text.splitlines())
    started = [json.loads(e.data) for e in parsed if e.event == "job.started"]
    assert [s["resumed"] for s in started] == [False]
    assert answer["retried_seq"] == seqs[failed_at + 1]

    # Completed now: nothing to retry.
    resp = await service.client.post(f"/jobs/{job_id}/retry")
    assert resp.status_code == 409 and "nothing to retry" in resp.json()["detail"]


async def test_retry_refuses_a_running_job_and_bad_bodies(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()

    async def hold(_body: dict[str, Any], _n: int) -> None:
        await gate.wait()

    fake_upstream.script = hold
    job_id = (await service.submit(graph()))["id"]
    resp = await service.client.post(f"/jobs/{job_id}/retry")
    assert resp.status_code == 409
    assert "only a failed or cancelled job can be retried" in resp.json()["detail"]
    bad = await service.client.post(f"/jobs/{job_id}/retry", json={"budget_usd": -1})
    assert bad.status_code == 422
    bad = await service.client.post(f"/jobs/{job_id}/retry", json={"budgit": 1})
    assert bad.status_code == 422
    assert (await service.client.post("/jobs/01jzzzzzzzzzzzzzzzzzzzzzzz/retry")).status_code == 404
    gate.set()
    await service.wait(job_id)


async def test_a_cancelled_job_resumes_where_it_stopped(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()

    async def hold_second(body: dict[str, Any], _n: int) -> None:
        if "use " in body["messages"][-1]["content"]:
            await gate.wait()

    fake_upstream.script = hold_second
    job_id = (await service.submit(graph()))["id"]
    async with asyncio.timeout(10):
        while not fake_upstream.calls_with("use "):
            await asyncio.sleep(0.01)
    assert (await service.client.post(f"/jobs/{job_id}/cancel")).status_code == 202
    cancelled = await service.wait(job_id)
    assert cancelled["status"] == "cancelled"
    done_before = cancelled["counts"]["completed"]
    assert done_before >= 1
    gate.set()
    fake_upstream.script = None
    calls_before = len(fake_upstream.calls)
    resp = await service.client.post(f"/jobs/{job_id}/retry", json={"max_retries": 2})
    assert resp.status_code == 202, resp.text
    again = await service.wait(job_id)
    assert again["status"] == "completed"
    # Only those not completed before were called.
    assert len(fake_upstream.calls) - calls_before == 5 - done_before


async def test_a_job_stopped_by_its_budget_needs_a_higher_one(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "name": "budget",
        "model": "kimi-k2.5",
        "budget_usd": 0.0000001,
        "max_concurrency": 1,
        "agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(4)],
    }
    job_id = (await service.submit(body))["id"]
    stopped = await service.wait(job_id)
    assert stopped["status"] == "cancelled", stopped
    resp = await service.client.post(f"/jobs/{job_id}/retry")
    assert resp.status_code == 409 and "budget_usd" in resp.json()["detail"]
    resp = await service.client.post(f"/jobs/{job_id}/retry", json={"budget_usd": 100.0})
    assert resp.status_code == 202, resp.text
    again = await service.wait(job_id)
    assert again["status"] == "completed"
    assert again["budget_usd"] == 100.0


async def test_another_tenants_job_cannot_be_retried(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, auth_cache_s=0)
    migrate.upgrade(settings.database_url)
    key_a, _ = create_key(settings.database_url, "acme")
    key_b, _ = create_key(settings.database_url, "globex")
    BROKEN["on"] = True
    fake_upstream.script = fail_bad
    async for svc in start_service(settings):
        a = {"Authorization": f"Bearer {key_a}"}
        b = {"Authorization": f"Bearer {key_b}"}
        job_id = (await svc.client.post("/jobs", json=graph(), headers=a)).json()["id"]
        assert (await svc.wait_as(job_id, a))["status"] == "failed"
        resp = await svc.client.post(f"/jobs/{job_id}/retry", headers=b)
        assert resp.status_code == 404 and resp.json()["detail"] == "job not found"
        resp = await svc.client.post(f"/jobs/{job_id}/retry", headers=a)
        assert resp.status_code == 202


async def test_a_retry_over_the_tenants_active_job_limit_is_a_429(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, tenant_max_active_jobs=1, tenant_submits_per_s=1000.0)
    BROKEN["on"] = True
    fake_upstream.script = fail_bad
    release = asyncio.Event()

    async def hold(body: dict[str, Any], _n: int) -> httpx2.Response | None:
        if "HOLD" in body["messages"][-1]["content"]:
            await release.wait()
        return None

    async for svc in start_service(settings):
        failed = await svc.submit(graph())
        assert (await svc.wait(failed["id"]))["status"] == "failed"
        fake_upstream.script = hold
        running = await svc.submit({"agents": [{"id": "slow", "task": "HOLD"}]})
        resp = await svc.client.post(f"/jobs/{failed['id']}/retry")
        assert resp.status_code == 429, resp.text
        assert "already has 1 jobs queued or running (the limit is 1)" in resp.json()["detail"]
        assert "retry-after" in resp.headers
        # Nothing changed: the job is still failed, and can be retried once there is room.
        assert (await svc.client.get(f"/jobs/{failed['id']}")).json()["status"] == "failed"
        release.set()
        await svc.wait(running["id"])
        BROKEN["on"] = False
        resp = await svc.client.post(f"/jobs/{failed['id']}/retry")
        assert resp.status_code == 202, resp.text
        assert (await svc.wait(failed["id"]))["status"] == "completed"
