"""Crash and restart: kill -9 mid-job, SIGTERM with a grace period. Nothing accepted is lost
and no agent that completed is ever called again (checked against the simulator's log)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.e2e import agent_rows, calls_by_prompt, wait_for_completed
from tests.helpers.processes import start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e


def fan_out_job(n: int) -> dict[str, Any]:
    agents: list[dict[str, Any]] = [{"id": f"w{i}", "task": f"work item {i}"} for i in range(n)]
    agents.append(
        {"id": "merge", "task": "Merge the work items.", "depends_on": [f"w{i}" for i in range(10)]}
    )
    return {"name": "durable", "max_concurrency": 40, "agents": agents}


def test_kill_9_mid_job_resumes_without_repeating_completed_agents(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "100,300", "--seed", "3")
    db = tmp_path / "swarm.db"
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"}
    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=fan_out_job(500)).json()["id"]
            wait_for_completed(client, job_id, 150)
        svc.stop(sig_kill=True)

        before = agent_rows(db, job_id)
        completed_before = {a for a, (s, _, _) in before.items() if s == "completed"}
        running_before = {a: n for a, (s, n, _) in before.items() if s == "running"}
        assert len(completed_before) >= 150 and len(completed_before) < 501
        # With 40 calls in flight at the kill, some agents were caught mid-call.
        assert running_before
        calls_at_kill = calls_by_prompt(sim)

        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = wait_job(client, job_id, timeout=90)
        svc.stop()
        assert job["status"] == "completed"
        assert job["counts"]["completed"] == 501

        after = agent_rows(db, job_id)
        calls = calls_by_prompt(sim)
        for agent_id in completed_before:
            prompt = after[agent_id][2]
            assert prompt is not None
            # Called once, before the kill, and never again.
            assert calls[prompt] == calls_at_kill[prompt] == 1, agent_id
            assert after[agent_id][1] == before[agent_id][1]
        for agent_id, attempts in running_before.items():
            # Caught mid-call: retried after the restart, and that attempt is counted.
            assert after[agent_id][0] == "completed"
            assert after[agent_id][1] == attempts + 1, agent_id
        # Every agent's prompt reached the upstream; none was lost.
        assert all(calls[row[2]] >= 1 for row in after.values() if row[2] is not None)
    finally:
        sim.stop()


def test_sigterm_lets_calls_in_flight_finish_then_resumes_the_rest(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "800,1200", "--seed", "5")
    db = tmp_path / "swarm.db"
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"}
    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            body = {
                "max_concurrency": 10,
                "agents": [{"id": f"a{i}", "task": f"slow item {i}"} for i in range(40)],
            }
            job_id = client.post("/jobs", json=body).json()["id"]
            deadline = time.monotonic() + 10
            # An agent is `running` a moment before its call reaches the upstream: wait
            # until the simulator itself has the calls in flight.
            while (
                client.get(f"/jobs/{job_id}").json()["counts"]["running"] < 5
                or httpx2.get(f"{sim.url}/_sim/stats").json()["in_flight"] < 5
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        stats = httpx2.get(f"{sim.url}/_sim/stats").json()
        in_flight, requests_before = stats["in_flight"], stats["requests"]
        started = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(timeout=30)
        stopped_after = time.monotonic() - started
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert svc.proc.returncode in (0, -signal.SIGTERM), svc.log()
        assert "Traceback" not in svc.log()
        # In-flight calls (≈1 s each) were allowed to finish; nothing waited the full grace.
        assert stopped_after < 8

        mid = agent_rows(db, job_id)
        assert "running" not in {s for s, _, _ in mid.values()}
        done_at_stop = {a for a, (s, _, _) in mid.items() if s == "completed"}
        assert len(done_at_stop) >= 5
        # Calls stop starting once the drain begins (a tick after the signal): had the
        # waiting agents gone on, the grace period would have seen most of the 60 done.
        requests_after = httpx2.get(f"{sim.url}/_sim/stats").json()["requests"]
        assert requests_after - requests_before <= in_flight + 5
        assert len(done_at_stop) <= 15
        calls_at_stop = calls_by_prompt(sim)

        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = wait_job(client, job_id, timeout=60)
        svc.stop()
        assert job["status"] == "completed"
        after = agent_rows(db, job_id)
        calls = calls_by_prompt(sim)
        for agent_id in done_at_stop:
            prompt = after[agent_id][2]
            assert prompt is not None and calls[prompt] == calls_at_stop[prompt] == 1
        assert all(n == 1 for _, n, _ in after.values())
    finally:
        sim.stop()
