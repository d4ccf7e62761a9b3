"""A swarm against an upstream with a hidden concurrency cap: the adaptive limit finds it."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.e2e.conftest import start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e


def test_hidden_concurrency_cap_is_found_without_failing_agents(tmp_path: Path) -> None:
    cap = 25
    sim = start_simulator(
        tmp_path,
        "--latency-uniform-ms",
        "50,100",
        "--concurrency-cap",
        str(cap),
        "--retry-after-ms",
        "100",
        "--seed",
        "11",
    )
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        try:
            body = {
                "max_concurrency": 400,
                "agents": [{"id": f"d{i}", "task": f"document {i}"} for i in range(2000)],
            }
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                job_id = client.post("/jobs", json=body).json()["id"]
                job = wait_job(client, job_id, timeout=120)
        finally:
            svc.stop()
        stats = httpx2.get(f"{sim.url}/_sim/stats").json()
    finally:
        sim.stop()
    assert job["status"] == "completed", job["error"]
    assert job["counts"]["completed"] == 2000
    # The simulator never served more than its cap at once, and the service kept it busy
    # without drowning it in 429s.
    assert stats["peak_in_flight"] <= cap
    share_429 = stats["rate_limited"] / stats["requests"]
    assert share_429 < 0.10, stats
