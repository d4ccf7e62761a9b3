"""Replicas on one PostgreSQL database (issue 14): two `api` and three `worker` processes
on loopback with the simulator upstream. A worker killed mid-job, an API replica killed
under its streams, a paused worker whose job was taken over, the database's connections
cut: no job is lost, no completed agent is called again, every stream is whole."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.replicas import LEASE_S, Follower, cluster, swarm, wait_completed, wait_status
from tests.helpers.e2e import sim_requests
from tests.helpers.processes import Proc, start_simulator
from tests.helpers.sse import parse

pytestmark = pytest.mark.e2e

FINISHED = {"completed", "failed", "cancelled"}


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(
        tmp_path, "--latency-uniform-ms", "20,60", "--seed", "3", "--request-log-size", "50000"
    )
    yield sim
    sim.stop()


def replay(url: str, job_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    body = httpx2.get(f"{url}/jobs/{job_id}/events", timeout=30).text
    return [(int(e.id or 0), e.event, e.json()) for e in parse(body)]


def completed_agents(url: str, job_id: str) -> set[str]:
    done: set[str] = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"status": "completed", "limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = httpx2.get(f"{url}/jobs/{job_id}/agents", params=params, timeout=10).json()
        done |= {a["id"] for a in page["data"]}
        cursor = page["next_cursor"]
        if not cursor:
            return done


def test_a_killed_worker_job_completes_on_another_and_the_stream_stays_whole(
    tmp_path: Path, postgres_url: str, simulator: Proc
) -> None:
    with cluster(tmp_path, postgres_url, simulator, apis=2, workers=3) as c:
        api1, api2 = (p.url for p in c.apis)
        job_id = httpx2.post(f"{api2}/jobs", json=swarm(1000, concurrency=40), timeout=10).json()[
            "id"
        ]
        follower = Follower([api1, api2], job_id).start()
        # Late enough that what is left runs in a few seconds on a loaded machine.
        wait_completed(api1, job_id, 700)
        owner = c.owner(job_id)
        assert owner in c.workers
        c.workers[owner].stop(sig_kill=True)
        killed_at = time.monotonic()
        done_before = completed_agents(api1, job_id)

        job = wait_status(api1, job_id, FINISHED, timeout=LEASE_S + 5 + 30)
        took = time.monotonic() - killed_at
        assert job["status"] == "completed", job
        assert c.owner(job_id) is None  # released by the worker that finished it
        assert took <= LEASE_S + 5, f"took {took:.1f}s after the kill"
        follower.join(30)
        final = httpx2.get(f"{api2}/jobs/{job_id}", params={"agents": "false"}).json()

    # No agent completed before the kill was called again; those in flight were retried.
    calls = Counter(r["messages"][-1]["content"] for r in sim_requests(simulator))
    assert {f"agent task number {i}" for i in range(1000)} <= set(calls)
    for agent_id in done_before:
        assert calls[f"agent task number {agent_id[1:]}"] == 1, agent_id
    assert sum(calls.values()) - 1000 <= 40  # at most the calls in flight at the kill

    # The stream the client followed is the replay: gap-free, no duplicate at any seam.
    seen = [(int(e.id or 0), e.event, e.json()) for e in follower.events]
    assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][1] == "job.completed"
    completed = [d for _, t, d in seen if t == "agent.completed"]
    assert len(completed) == 1000
    assert len({d["agent_id"] for d in completed}) == 1000
    starts = [d for _, t, d in seen if t == "job.started"]
    assert [d["resumed"] for d in starts] == [False, True]  # the takeover resumed it
    # Usage and cost: the job's totals are those of its agents' answers, each counted once.
    assert final["usage"]["total_tokens"] == sum(d["usage"]["total_tokens"] for d in completed)
    assert final["usage"]["prompt_tokens"] == sum(d["usage"]["prompt_tokens"] for d in completed)
    cost = sum(d["cost_usd"] for d in completed)
    assert final["cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert final["counts"]["completed"] == 1000
