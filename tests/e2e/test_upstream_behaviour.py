"""A swarm against an upstream with a hidden concurrency cap: the adaptive limit finds it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest

from tests.helpers.processes import start_service, start_simulator, wait_job

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
                metrics = client.get("/metrics").text
        finally:
            svc.stop()
        stats = httpx2.get(f"{sim.url}/_sim/stats").json()
    finally:
        sim.stop()
    assert job["status"] == "completed", job["error"]
    assert job["counts"]["completed"] == 2000
    # The adaptive limit settled near the hidden cap, far below the job's 400…
    limit = next(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('swarm_model_concurrency_limit{model="kimi-k2.5"}')
    )
    assert cap * 0.5 <= limit <= cap * 1.5, limit
    # …without drowning the upstream in 429s.
    share_429 = stats["rate_limited"] / stats["requests"]
    assert share_429 < 0.10, stats


def test_500_agents_in_flight_cause_no_pool_time_outs(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "1500,2000", "--seed", "2")
    env = {
        "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
        "SWARM_GLOBAL_CONCURRENCY": "500",
        "SWARM_MODEL_CONCURRENCY_INITIAL": "500",
        "SWARM_MODEL_CONCURRENCY_MAX": "500",
        # A pool wait would fail the call after this long; calls take up to 2 s.
        "SWARM_TIMEOUT_POOL_S": "1",
    }
    try:
        svc = start_service(tmp_path, env)
        try:
            body = {
                "max_concurrency": 500,
                "agents": [{"id": f"d{i}", "task": f"document {i}"} for i in range(500)],
            }
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                job_id = client.post("/jobs", json=body).json()["id"]
                job = wait_job(client, job_id, timeout=60)
                agents = job["agents"]
        finally:
            svc.stop()
        stats = httpx2.get(f"{sim.url}/_sim/stats").json()
    finally:
        sim.stop()
    assert job["status"] == "completed"
    # Every call made once: nothing timed out waiting for a pooled connection.
    assert all(a["attempts"] == 1 for a in agents)
    assert stats["requests"] == 500
    # Calls beyond the pool's 200 connections waited for a connection outside the pool.
    assert stats["peak_in_flight"] == 200


def test_cancel_aborts_hanging_calls_within_a_second(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--hang-rate", "1")
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        try:
            body = {"agents": [{"id": f"h{i}", "task": f"hang {i}"} for i in range(8)]}
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                job_id = client.post("/jobs", json=body).json()["id"]
                deadline = time.monotonic() + 10
                while httpx2.get(f"{sim.url}/_sim/stats").json()["in_flight"] < 8:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                started = time.monotonic()
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
                job = wait_job(client, job_id, timeout=10)
                elapsed = time.monotonic() - started
            # The service (still running) closed the hanging connections.
            deadline = time.monotonic() + 2
            while httpx2.get(f"{sim.url}/_sim/stats").json()["in_flight"] > 0:
                assert time.monotonic() < deadline, "the hanging calls were not aborted"
                time.sleep(0.05)
        finally:
            svc.stop()
    finally:
        sim.stop()
    assert job["status"] == "cancelled"
    assert job["counts"]["cancelled"] == 8
    # Aborted rather than waited for (the calls hang forever); about 0.1 s on a quiet machine.
    assert elapsed < 3.0
