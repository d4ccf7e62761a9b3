"""kill -9 in the middle of a planner-driven fan-out: the restarted service carries on from
the stored items; no item that completed is called again (checked against the simulator's
log), and the reducer sees every item's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.e2e import agent_rows, calls_by_prompt, wait_for_completed
from tests.helpers.processes import start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e

N = 120


def swarm() -> dict[str, Any]:
    return {
        "name": "durable-swarm",
        "max_concurrency": 30,
        "agents": [
            {
                "id": "plan",
                "response_format": "json",
                "task": f'Plan the survey. Answer {{"items": [...]}} with exactly {N} items.',
            },
            {
                "id": "probe",
                "depends_on": ["plan"],
                "map": {"over": "agents.plan.output"},
                "task": "Investigate {{item.title}}: {{item.question}}",
                "max_tokens": 40,
            },
            {"id": "report", "depends_on": ["probe"], "task": "Write the survey report."},
        ],
    }


def test_kill_9_mid_fan_out_resumes_from_the_stored_items(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "100,300", "--seed", "11")
    db = tmp_path / "swarm.db"
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"}
    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=swarm()).json()["id"]
            wait_for_completed(client, job_id, 40)
        svc.stop(sig_kill=True)

        before = agent_rows(db, job_id)
        items_before = {a for a in before if a.startswith("probe[")}
        assert len(items_before) == N  # the fan-out was stored whole, in one transaction
        completed_before = {a for a, (s, _, _) in before.items() if s == "completed"}
        assert "plan" in completed_before and "report" not in completed_before
        assert len(completed_before) < N + 1
        calls_at_kill = calls_by_prompt(sim)

        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = wait_job(client, job_id, timeout=90)
            assert job["status"] == "completed", job
            assert job["counts"]["total"] == N + 3
            report = client.get(f"/jobs/{job_id}/agents/report").json()
            probe = client.get(f"/jobs/{job_id}/agents/probe").json()
        svc.stop()

        after = agent_rows(db, job_id)
        calls = calls_by_prompt(sim)
        for agent_id in completed_before:
            prompt = after[agent_id][2]
            assert calls[prompt] == calls_at_kill[prompt] == 1, agent_id
        # The plan was made once: the items after the restart are the stored ones.
        plan_prompts = [p for p in calls if p.startswith("Plan the survey.")]
        assert len(plan_prompts) == 1 and calls[plan_prompts[0]] == 1
        outputs = json.loads(probe["output"])
        assert len(outputs) == N and all(outputs)
        for i, out in enumerate(outputs):
            assert f'<part id="probe[{i}]">\n{out}\n</part>' in report["prompt"]
    finally:
        sim.stop()
