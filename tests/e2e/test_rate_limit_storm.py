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
    # One request a minute: every other call in the storm is answered 429, Retry-After 1.
    sim = start_simulator(tmp_path, "--rpm-cap", "1", "--retry-after-ms", "1000")
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
