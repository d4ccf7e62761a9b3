"""Three service processes (each `all`, its own SQLite database and its own job) share one
Redis and one simulator whose hidden concurrency cap is 20: with the per-model limit
shared they find the cap together, so few calls are answered 429 and no agent fails. And
a service whose Redis stops mid-run goes on under its own share and returns to Redis."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx2
import pytest

from tests.helpers.processes import Proc, free_port, start_service, start_simulator, wait_job
from tests.helpers.redis import REDIS_URL
from tests.scheduler.redis_server import RedisServer

pytestmark = pytest.mark.e2e

CAP = 20
AGENTS_PER_JOB = 300


def test_three_processes_sharing_the_limit_keep_429s_rare(
    tmp_path: Path, redis_prefix: str
) -> None:
    sim = start_simulator(
        tmp_path, "--latency-uniform-ms", "50,150", "--seed", "3", "--concurrency-cap", str(CAP)
    )
    services: list[Proc] = []
    try:
        for n in range(3):
            services.append(
                start_service(
                    tmp_path,
                    {
                        "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
                        "SWARM_REDIS_URL": REDIS_URL,
                        "SWARM_REDIS_KEY_PREFIX": redis_prefix,
                        "SWARM_MODEL_CONCURRENCY_INITIAL": "8",
                    },
                    db=tmp_path / f"swarm-{n}.db",
                )
            )
        graph = {
            "name": "shared-limit",
            "max_concurrency": 200,
            "agents": [{"id": f"a{i}", "task": f"item {i}"} for i in range(AGENTS_PER_JOB)],
        }
        clients = [httpx2.Client(base_url=s.url, timeout=30) for s in services]
        try:
            ids = []
            for client in clients:
                answer = client.post("/jobs", json=graph)
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])
            jobs = [wait_job(c, i, timeout=180) for c, i in zip(clients, ids, strict=True)]
            metrics = clients[0].get("/metrics").text
        finally:
            for client in clients:
                client.close()
        stats = httpx2.get(sim.url + "/_sim/stats").json()
    finally:
        for svc in services:
            svc.stop()
        sim.stop()
    for job in jobs:
        assert job["status"] == "completed", job
        assert job["counts"].get("failed", 0) == 0
    share = stats["rate_limited"] / stats["requests"]
    print(f"429 share with the limit shared by 3 processes: {share:.1%} of {stats['requests']}")
    assert share <= 0.05, stats
    assert "swarm_shared_limits_redis_up 1.0" in metrics
    assert "swarm_shared_limits_workers 3.0" in metrics


def metric(client: httpx2.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_redis_stopped_and_restarted_mid_run(tmp_path: Path, redis_prefix: str) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = RedisServer(free_port(), tmp_path)
    redis.start()
    sim = start_simulator(
        tmp_path, "--latency-uniform-ms", "50,150", "--seed", "5", "--concurrency-cap", str(CAP)
    )
    svc: Proc | None = None
    try:
        svc = start_service(
            tmp_path,
            {
                "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
                "SWARM_REDIS_URL": redis.url,
                "SWARM_REDIS_KEY_PREFIX": redis_prefix,
                "SWARM_MODEL_CONCURRENCY_INITIAL": "8",
            },
        )
        graph = {
            "max_concurrency": 200,
            "agents": [{"id": f"a{i}", "task": f"item {i}"} for i in range(400)],
        }
        with httpx2.Client(base_url=svc.url, timeout=30) as client:
            job_id = client.post("/jobs", json=graph).json()["id"]
            deadline = time.monotonic() + 30
            while client.get(f"/jobs/{job_id}").json()["counts"]["completed"] < 50:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            redis.stop()
            deadline = time.monotonic() + 10
            while metric(client, "swarm_shared_limits_redis_up") != 0:
                assert time.monotonic() < deadline, "the fallback was not noticed"
                time.sleep(0.1)
            assert metric(client, "swarm_shared_limits_fallbacks") == 1
            running = client.get(f"/jobs/{job_id}").json()
            assert running["status"] == "running"  # it goes on under the local share
            redis.start()  # empty: everything it held is gone
            deadline = time.monotonic() + 10
            while metric(client, "swarm_shared_limits_redis_up") != 1:
                assert time.monotonic() < deadline, "Redis's return was not noticed"
                time.sleep(0.1)
            job = wait_job(client, job_id, timeout=120)
        stats = httpx2.get(sim.url + "/_sim/stats").json()
        log = svc.log()
    finally:
        if svc is not None:
            svc.stop()
        sim.stop()
        redis.stop()
    assert job["status"] == "completed", job
    assert job["counts"]["completed"] == 400
    # Every agent was called (and answered) exactly once: nothing lost, nothing doubled.
    assert stats["by_status"].get("200") == 400, stats
    assert "Redis is unreachable" in log
    assert "shared again" in log
