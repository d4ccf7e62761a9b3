"""Retry of a failed job against the real service and simulator: only what failed (and what
it skipped) is called again, the event stream stays one gap-free sequence, and a kill -9
during the retry's run resumes like any job."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.e2e import agent_rows, sim_requests
from tests.helpers.processes import Proc, start_service, start_simulator, wait_job
from tests.helpers.sse import parse_lines

pytestmark = pytest.mark.e2e

# Long enough to overflow the simulator's context window while it is set small.
PADDING = " filler" * 3000


def failing_job(n_ok: int, n_long: int) -> dict[str, Any]:
    """`n_ok` plain agents, `n_long` whose prompt overflows a small context window, and
    one dependent per long agent (skipped when it fails)."""
    agents: list[dict[str, Any]] = [{"id": f"w{i}", "task": f"work item {i}"} for i in range(n_ok)]
    for i in range(n_long):
        agents.append({"id": f"long{i}", "task": f"LONG {i}{PADDING}"})
        agents.append(
            {
                "id": f"after{i}",
                "task": f"after long {i}: {{{{long{i}.output}}}}",
                "depends_on": [f"long{i}"],
            }
        )
    # A bounded answer: the default max_tokens (4096) would not fit the small window either.
    return {
        "name": "flaky",
        "max_concurrency": 50,
        "max_retries": 0,
        "max_tokens": 200,
        "agents": agents,
    }


def sim_config(sim: Proc, **patch: Any) -> None:
    resp = httpx2.post(f"{sim.url}/_sim/config", json=patch)
    assert resp.status_code == 200, resp.text


def calls(sim: Proc) -> Counter[str]:
    """Chat requests by the first 40 characters of their last message."""
    return Counter(
        str(r["messages"][-1]["content"])[:40] for r in sim_requests(sim) if r.get("messages")
    )


def event_stream(client: httpx2.Client, job_id: str) -> list[tuple[int, str]]:
    resp = client.get(f"/jobs/{job_id}/events", timeout=30)
    assert resp.status_code == 200
    events, _ = parse_lines(resp.text.splitlines())
    return [(int(e.id or 0), e.event) for e in events]


def test_retry_calls_exactly_the_failed_agents_and_their_skipped_dependents(
    tmp_path: Path,
) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "5,20", "--seed", "5")
    try:
        sim_config(sim, context_window=2000)  # the faked upstream error: 20 prompts too long
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        with httpx2.Client(base_url=svc.url, timeout=20) as client:
            job_id = client.post("/jobs", json=failing_job(460, 20)).json()["id"]
            first = wait_job(client, job_id, timeout=120)
            assert first["status"] == "failed"
            assert first["counts"]["total"] == 500
            assert (first["counts"]["failed"], first["counts"]["skipped"]) == (20, 20)
            before = calls(sim)
            assert sum(v for k, v in before.items() if k.startswith("after long")) == 0

            sim_config(sim, context_window=None)  # the upstream fixed
            resp = client.post(f"/jobs/{job_id}/retry")
            assert resp.status_code == 202, resp.text
            assert resp.json()["agents_retried"] == 40
            again = wait_job(client, job_id, timeout=120)
            assert again["status"] == "completed", again
            assert again["counts"]["completed"] == 500

            after = calls(sim)
            new = after - before
            # Exactly the 20 that failed and the 20 they had skipped, once each; nothing else.
            assert sum(new.values()) == 40, new
            assert all(k.startswith(("LONG ", "after long ")) for k in new), new
            assert all(v == 1 for v in new.values())

            stream = event_stream(client, job_id)
            seqs = [s for s, _ in stream]
            assert seqs == list(range(1, len(seqs) + 1))
            kinds = [k for _, k in stream]
            assert kinds.count("job.failed") == 1 and kinds[-1] == "job.completed"
            assert kinds[kinds.index("job.failed") + 1] == "job.retried"
        svc.stop()
    finally:
        sim.stop()


def test_kill_9_during_a_retry_run_resumes_like_any_job(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "100,300", "--seed", "3")
    db = tmp_path / "swarm.db"
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"}
    try:
        sim_config(sim, context_window=2000)
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=20) as client:
            body = failing_job(10, 150)
            body["max_concurrency"] = 20
            job_id = client.post("/jobs", json=body).json()["id"]
            assert wait_job(client, job_id, timeout=120)["status"] == "failed"
            sim_config(sim, context_window=None)
            assert client.post(f"/jobs/{job_id}/retry").status_code == 202
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                counts = client.get(f"/jobs/{job_id}", params={"agents": "false"}).json()["counts"]
                if counts["completed"] >= 60:
                    break
                time.sleep(0.05)
        svc.stop(sig_kill=True)
        rows = agent_rows(db, job_id)
        done_at_kill = {a for a, (s, _, _) in rows.items() if s == "completed"}
        assert 60 <= len(done_at_kill) < 310
        calls_at_kill = calls(sim)

        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=20) as client:
            job = wait_job(client, job_id, timeout=120)
            assert job["status"] == "completed", job
            assert job["counts"]["completed"] == 310
            stream = event_stream(client, job_id)
        svc.stop()
        seqs = [s for s, _ in stream]
        assert seqs == list(range(1, len(seqs) + 1))
        new = calls(sim) - calls_at_kill
        for agent_id in done_at_kill:
            prompt = rows[agent_id][2]
            assert prompt is not None
            assert new[prompt[:40]] == 0, agent_id  # completed before the kill: not again
    finally:
        sim.stop()
