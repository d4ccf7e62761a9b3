"""Issue 14's K = 20 case with real replicas: one `api` and three `worker` processes on one
PostgreSQL database, the limits shared over Redis, a simulator whose hidden concurrency cap
is 20, three jobs (one per worker). The workers find the cap together: no agent fails and
at most 5 % of the calls are answered 429."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.e2e.replicas import cluster, swarm, wait_status
from tests.helpers.processes import Proc, start_simulator
from tests.helpers.redis import REDIS_URL

pytestmark = pytest.mark.e2e

CAP = 20
AGENTS = 900  # 300 per worker, about 25 s of calls at the cap


@pytest.fixture
def capped_simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(
        tmp_path, "--latency-uniform-ms", "200,800", "--seed", "14", "--concurrency-cap", str(CAP)
    )
    yield sim
    sim.stop()


def test_one_api_and_three_workers_sharing_the_limit_keep_429s_rare(
    tmp_path: Path, redis_prefix: str, postgres_url: str, capped_simulator: Proc
) -> None:
    with cluster(
        tmp_path,
        postgres_url,
        capped_simulator,
        apis=1,
        workers=3,
        SWARM_REDIS_URL=REDIS_URL,
        SWARM_REDIS_KEY_PREFIX=redis_prefix,
        SWARM_WORKER_MAX_JOBS="1",  # one job per worker: all three call the upstream at once
    ) as c:
        api = c.apis[0].url
        ids = []
        for n in range(3):
            answer = httpx2.post(
                f"{api}/jobs",
                json=swarm(AGENTS // 3, concurrency=200, prefix=f"job {n}"),
                timeout=30,
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        jobs = [wait_status(api, i, {"completed", "failed", "cancelled"}, 60) for i in ids]
        metrics = {w: httpx2.get(f"{p.url}/metrics", timeout=5).text for w, p in c.workers.items()}
    stats = httpx2.get(capped_simulator.url + "/_sim/stats", timeout=10).json()
    for job in jobs:
        assert job["status"] == "completed", job
        assert job["counts"]["completed"] == AGENTS // 3
        assert job["counts"].get("failed", 0) == 0
    share = stats["rate_limited"] / stats["requests"]
    print(f"429 share, 1 api + 3 workers sharing the limit: {share:.1%} of {stats['requests']}")
    assert share <= 0.05, stats
    for worker, text in metrics.items():
        # Each worker ran one of the jobs, under the limits it took from Redis.
        assert upstream_requests(text) > 0, worker
        assert "swarm_shared_limits_redis_up 1.0" in text, worker
        assert "swarm_shared_limits_workers 3.0" in text, worker


def upstream_requests(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("swarm_upstream_requests_total")
    )
