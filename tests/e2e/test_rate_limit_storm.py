"""A 15 s 429 storm (Retry-After 1) against the real simulator fails no agent: being told
to wait is bounded by rate_limit_wait_s, not by max_retries."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest

from tests.helpers.processes import start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e


def test_a_429_storm_fails_no_agent_with_default_retries(tmp_path: Path) -> None:
    # One request a minute: every other call in the storm is answered 429, Retry-After 1
    # (and no x-ratelimit-* headers, which would hold the calls instead: below).
    sim = start_simulator(
        tmp_path, "--rpm-cap", "1", "--retry-after-ms", "1000", "--no-ratelimit-headers"
    )
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        try:
            body = {"agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(20)]}
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                job_id = client.post("/jobs", json=body).json()["id"]
                time.sleep(15)
                httpx2.post(f"{sim.url}/_sim/config", json={"rpm_cap": None}).raise_for_status()
                job = wait_job(client, job_id, timeout=60)
                agents = [client.get(f"/jobs/{job_id}/agents/a{i}").json() for i in range(20)]
        finally:
            svc.stop()
    finally:
        sim.stop()
    assert job["status"] == "completed", job["error"]
    assert job["counts"]["failed"] == 0
    # The storm outlasted what max_retries (5 → 6 attempts) would have allowed.
    assert max(a["rate_limited"] for a in agents) > 6
    assert all(a["failed_attempts"] == 0 for a in agents)
    assert max(a["waited_s"] for a in agents) >= 10


def test_an_upstream_that_states_its_quota_gets_no_429_storm(tmp_path: Path) -> None:
    # The same kind of cap, announced in x-ratelimit-* headers: once they say nothing is
    # left, the service holds the model's calls until the reset (the minute's oldest call
    # leaving it) instead of retrying them into 429s every second.
    sim = start_simulator(tmp_path, "--rpm-cap", "2", "--retry-after-ms", "1000")
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        try:
            body = {"agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(6)]}
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                job_id = client.post("/jobs", json=body).json()["id"]
                time.sleep(6)
                stats = httpx2.get(f"{sim.url}/_sim/stats").json()
                job = client.get(f"/jobs/{job_id}").json()
        finally:
            svc.stop()
    finally:
        sim.stop()
    # Six calls went at once: two answered, four met the cap before any answer said so.
    # Their retries (Retry-After 1 s) were then held, not sent: no 429 after the first.
    assert stats["requests"] - stats["rate_limited"] == 2
    assert stats["rate_limited"] <= 4
    assert job["counts"]["completed"] == 2 and job["counts"]["failed"] == 0
