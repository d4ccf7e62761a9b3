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
        expected = replay(api1, job_id)

    # No agent completed before the kill was called again; those in flight were retried.
    calls = Counter(r["messages"][-1]["content"] for r in sim_requests(simulator))
    assert {f"agent task number {i}" for i in range(1000)} <= set(calls)
    for agent_id in done_before:
        assert calls[f"agent task number {agent_id[1:]}"] == 1, agent_id
    assert sum(calls.values()) - 1000 <= 40  # at most the calls in flight at the kill

    # The stream the client followed is the replay: gap-free, no duplicate at any seam.
    seen = [(int(e.id or 0), e.event, e.json()) for e in follower.events]
    assert seen == expected
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


def test_cancel_on_one_api_replica_stops_the_job_and_streams_survive_an_api_kill(
    tmp_path: Path, postgres_url: str, simulator: Proc
) -> None:
    httpx2.post(f"{simulator.url}/_sim/config", json={"latency_uniform_ms": [300, 600]})
    with cluster(tmp_path, postgres_url, simulator, apis=2, workers=3) as c:
        api1, api2 = (p.url for p in c.apis)
        job_id = httpx2.post(f"{api1}/jobs", json=swarm(300, concurrency=10), timeout=10).json()[
            "id"
        ]
        # Two clients follow the job on api #1; it is killed under them.
        followers = [Follower([api1, api2], job_id).start() for _ in range(2)]
        wait_completed(api2, job_id, 20)
        c.apis[0].stop(sig_kill=True)
        wait_completed(api2, job_id, 40)

        asked = time.monotonic()
        response = httpx2.post(f"{api2}/jobs/{job_id}/cancel", timeout=10)
        assert response.status_code == 202, response.text
        job = wait_status(api2, job_id, FINISHED, timeout=10)
        stopped_in = time.monotonic() - asked
        assert job["status"] == "cancelled"
        assert stopped_in < 1.0, f"the cancel took {stopped_in:.2f}s"
        calls_at_stop = len(sim_requests(simulator))
        for follower in followers:
            follower.join(30)
            assert follower.reconnects >= 1  # moved from the killed replica to the other
        expected = replay(api2, job_id)
        # A worker serves health and metrics only.
        worker = next(iter(c.workers.values()))
        refused = httpx2.get(f"{worker.url}/jobs/{job_id}")
        assert refused.status_code == 404 and "worker" in refused.json()["detail"]
        assert httpx2.get(f"{worker.url}/metrics").status_code == 200
        time.sleep(1)
        assert len(sim_requests(simulator)) == calls_at_stop  # nothing started after it

    assert expected[-1][1] == "job.cancelled"
    for follower in followers:
        seen = [(int(e.id or 0), e.event, e.json()) for e in follower.events]
        assert seen == expected  # nothing lost, nothing twice across the reconnection


def test_a_paused_worker_cannot_write_the_job_another_took_over(
    tmp_path: Path, postgres_url: str, simulator: Proc
) -> None:
    httpx2.post(f"{simulator.url}/_sim/config", json={"latency_uniform_ms": [200, 400]})
    with cluster(tmp_path, postgres_url, simulator, apis=1, workers=2) as c:
        api = c.apis[0].url
        job_id = httpx2.post(f"{api}/jobs", json=swarm(200, concurrency=20), timeout=10).json()[
            "id"
        ]
        follower = Follower([api], job_id).start()
        wait_completed(api, job_id, 20)
        owner = c.owner(job_id)
        assert owner in c.workers
        paused = c.workers[owner]
        os.kill(paused.proc.pid, signal.SIGSTOP)
        # Past its lease: the other worker claims the job and resumes it.
        deadline = time.monotonic() + LEASE_S + 10
        while c.owner(job_id) in (owner, None) and time.monotonic() < deadline:
            time.sleep(0.1)
        taker = c.owner(job_id)
        assert taker not in (owner, None), (
            c.sql(
                "SELECT string_agg(state || ' ' || coalesce(wait_event, '') || ' ' || query, "
                "' | ') FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid()"
            ),
            [w.log()[-3000:] for w in c.workers.values() if w is not paused],
        )
        wait_completed(api, job_id, 60)
        # It wakes up with answers in hand and tries to write them: all refused.
        os.kill(paused.proc.pid, signal.SIGCONT)
        job = wait_status(api, job_id, FINISHED, timeout=60)
        assert job["status"] == "completed"
        follower.join(30)
        deadline = time.monotonic() + 5
        while "lease" not in paused.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = paused.log()
        tokens = c.sql("SELECT lease_token FROM jobs WHERE id = :j", j=job_id)
        agents = httpx2.get(f"{api}/jobs/{job_id}", timeout=10).json()["agents"]

    assert (
        "writes refused: this worker lost the job's lease" in log or "lost the job's lease" in log
    )
    assert tokens == 2  # claimed twice: by the paused worker, then by the other
    seen = [(int(e.id or 0), e.event, e.json()) for e in follower.events]
    assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1))
    completed = [d["agent_id"] for _, t, d in seen if t == "agent.completed"]
    # Each agent completed once: the paused worker's late answers were never written.
    assert sorted(completed) == sorted(f"a{i}" for i in range(200))
    assert all(a["status"] == "completed" for a in agents)
    starts = [d["resumed"] for _, t, d in seen if t == "job.started"]
    assert starts == [False, True]


def test_workers_and_apis_reconnect_after_the_database_cuts_their_connections(
    tmp_path: Path, postgres_url: str, simulator: Proc
) -> None:
    httpx2.post(f"{simulator.url}/_sim/config", json={"latency_uniform_ms": [50, 150]})
    with cluster(tmp_path, postgres_url, simulator, apis=1, workers=2) as c:
        api = c.apis[0].url
        job_id = httpx2.post(f"{api}/jobs", json=swarm(400, concurrency=20), timeout=10).json()[
            "id"
        ]
        follower = Follower([api], job_id).start()
        wait_completed(api, job_id, 50)
        # What a PostgreSQL restart does to its clients: every connection of the service's
        # database is cut (twice, a second apart, as the server comes back).
        database = postgres_url.rsplit("/", 1)[1]
        for _ in range(2):
            cut = c.sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :d AND pid <> pg_backend_pid()",
                d=database,
            )
            assert cut >= 3
            time.sleep(1)
        job = wait_status(api, job_id, FINISHED, timeout=60)
        assert job["status"] == "completed", job
        follower.join(30)
        for p in [*c.apis, *c.workers.values()]:
            assert httpx2.get(f"{p.url}/readyz", timeout=5).status_code == 200, p.log()
        expected = replay(api, job_id)
        # A new job after the outage is picked up at once.
        asked = time.monotonic()
        second = httpx2.post(f"{api}/jobs", json=swarm(1, concurrency=1), timeout=10).json()
        wait_status(api, second["id"], {"running", *FINISHED}, timeout=10)
        picked_up_in = time.monotonic() - asked

    seen = [(int(e.id or 0), e.event, e.json()) for e in follower.events]
    assert seen == expected
    assert len([1 for _, t, _ in seen if t == "agent.completed"]) == 400
    assert picked_up_in < 1.0


def test_workers_keep_to_their_cap_and_a_stopped_worker_hands_its_job_over(
    tmp_path: Path, postgres_url: str, simulator: Proc
) -> None:
    httpx2.post(f"{simulator.url}/_sim/config", json={"latency_uniform_ms": [150, 250]})
    with cluster(
        tmp_path,
        postgres_url,
        simulator,
        apis=1,
        workers=2,
        SWARM_WORKER_MAX_JOBS="1",
        SWARM_SHUTDOWN_GRACE_S="2",
    ) as c:
        api = c.apis[0].url
        ids = []
        for name in ("x", "y", "z"):
            body = swarm(30, concurrency=2, prefix=name)
            ids.append(httpx2.post(f"{api}/jobs", json=body, timeout=10).json()["id"])
            time.sleep(0.5)
        x, y, z = ids
        wait_completed(api, y, 2)
        # One job per worker: the two spread over both, the third waits for a free slot.
        owners = {c.owner(x), c.owner(y)}
        assert owners == set(c.workers), owners
        assert c.owner(z) is None
        assert httpx2.get(f"{api}/jobs/{z}", timeout=5).json()["status"] == "queued"

        # SIGTERM: the worker drains and lets its job go (not finished: resumed elsewhere).
        stopped = c.workers[str(c.owner(x))]
        stopped.proc.terminate()
        assert stopped.proc.wait(timeout=20) in (0, -signal.SIGTERM)
        for job_id in ids:
            assert wait_status(api, job_id, FINISHED, timeout=60)["status"] == "completed"
        starts = [d["resumed"] for _, t, d in replay(api, x) if t == "job.started"]

    assert starts == [False, True]
    assert "Traceback" not in stopped.log(), stopped.log()
