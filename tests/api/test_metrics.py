"""Job metrics, the Prometheus endpoint, and the state-change log."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx2
import pytest

from app.jobs.service import latency_stats
from app.logging_setup import JsonFormatter
from tests.helpers.service import UPSTREAM_KEY, FakeUpstream, Service

_seen: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset_seen() -> None:
    _seen.clear()


def flaky_then_ok(req: dict[str, Any], _n: int) -> httpx2.Response | None:
    """task 0: two 429s, then fine; task 1: a 401; the rest: fine."""
    content = req["messages"][-1]["content"]
    if content == "task 0":
        _seen[content] = _seen.get(content, 0) + 1
        if _seen[content] <= 2:
            return httpx2.Response(429, json={"error": {"message": "slow down"}})
    if content == "task 1":
        return httpx2.Response(401, json={"error": {"message": "no"}})
    return None


async def test_job_metrics_add_up(service: Service, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script = flaky_then_ok
    fake_upstream.latency_s = 0.01
    job = await service.submit(
        {"max_concurrency": 1, "agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(6)]}
    )
    await service.wait(job["id"])
    m = (await service.client.get(f"/jobs/{job['id']}/metrics")).json()
    assert m["counts"] == {
        "pending": 0,
        "running": 0,
        "completed": 5,
        "failed": 1,
        "skipped": 0,
        "cancelled": 0,
        "total": 6,
    }
    assert m["calls"] == 8 and m["retries"] == 2 and m["rate_limited"] == 2
    assert m["latency"]["count"] == 5
    assert 10 <= m["latency"]["p50_ms"] <= m["latency"]["p95_ms"] <= m["latency"]["max_ms"]
    assert m["wall_time_s"] > 0 and m["agents_per_second"] == pytest.approx(
        5 / m["wall_time_s"], rel=0.01
    )
    job_view = (await service.client.get(f"/jobs/{job['id']}")).json()
    assert m["usage"] == job_view["usage"] and m["cost_usd"] == job_view["cost_usd"]
    assert (await service.client.get("/jobs/nope/metrics")).status_code == 404


def test_latency_percentiles_are_nearest_rank() -> None:
    stats = latency_stats([float(x) for x in range(1, 101)])
    assert (stats.p50_ms, stats.p95_ms, stats.max_ms, stats.avg_ms) == (50, 95, 100, 50.5)
    assert latency_stats([]).count == 0


async def test_prometheus_metrics(service: Service, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script = flaky_then_ok
    job = await service.submit({"agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(4)]})
    await service.wait(job["id"])
    resp = await service.client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    expected = [
        'swarm_jobs{status="failed"} 1.0',
        'swarm_agents_finished_total{status="completed"} 3.0',
        'swarm_agents_finished_total{status="failed"} 1.0',
        'swarm_upstream_requests_total{model="kimi-k2.5",outcome="ok"} 3.0',
        'swarm_upstream_requests_total{model="kimi-k2.5",outcome="429"} 2.0',
        'swarm_upstream_requests_total{model="kimi-k2.5",outcome="error"} 1.0',
        'swarm_upstream_request_duration_seconds_count{model="kimi-k2.5"} 6.0',
        'swarm_model_concurrency_limit{model="kimi-k2.5"}',
        'swarm_upstream_in_flight{model="kimi-k2.5"} 0.0',
        'swarm_tokens_total{kind="completion",model="kimi-k2.5"} 15.0',
        "swarm_sse_streams_open 0.0",
    ]
    for line in expected:
        assert line in text, line
    assert 'swarm_cost_usd_total{model="kimi-k2.5"}' in text


async def test_every_state_change_is_logged_with_ids_and_no_secret(
    service: Service, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.events")
    fake_upstream.script = flaky_then_ok
    job = await service.submit({"agents": [{"id": "a0", "task": "task 0"}]})
    await service.wait(job["id"])
    records = [r for r in caplog.records if r.name == "app.events"]
    events = (await service.client.get(f"/jobs/{job['id']}/events")).text
    assert len(records) == events.count("\nevent: ") + events.startswith("event: ")
    assert [r.getMessage() for r in records][:2] == ["job.queued", "job.started"]
    assert all(getattr(r, "job_id", None) == job["id"] for r in records)
    retry = next(r for r in records if r.getMessage() == "agent.retrying")
    line = json.loads(JsonFormatter().format(retry))
    assert line["job_id"] == job["id"] and line["agent_id"] == "a0"
    assert line["reason"] == "rate_limited" and line["attempt"] == 1
    assert UPSTREAM_KEY not in caplog.text
