"""The seed article's two swarms, end to end: service and simulator as subprocesses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.e2e import agent, load, sim_requests
from tests.helpers.processes import Proc, start_service, wait_job

pytestmark = pytest.mark.e2e


def sim_tag(messages: list[dict[str, str]]) -> str:
    """The simulator's answer tag for a list of messages (see app/simulator)."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "SIM-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_example(client: httpx2.Client, name: str) -> dict[str, Any]:
    resp = client.post("/jobs", json=load(name))
    assert resp.status_code == 201, resp.text
    return wait_job(client, resp.json()["id"])


def test_document_analysis(service: Proc, simulator: Proc, client: httpx2.Client) -> None:
    job = run_example(client, "doc_analysis.json")
    assert job["status"] == "completed", job
    assert job["counts"]["completed"] == 4
    assert job["usage"]["total_tokens"] > 0 and job["cost_usd"] > 0
    results = client.get(f"/jobs/{job['id']}/results").json()["results"]
    summary = agent(client, job["id"], "summary")
    for dep in ("extract_metadata", "extract_entities", "sentiment_analysis"):
        assert results[dep] in summary["prompt"]
        # Each answer is the simulator's, for exactly the prompt the service sent.
        detail = agent(client, job["id"], dep)
        messages = [
            {"role": "system", "content": detail["system_prompt"]},
            {"role": "user", "content": detail["prompt"]},
        ]
        assert results[dep].startswith(sim_tag(messages)) or sim_tag(messages) in results[dep]
    # The summary prompt that reached the upstream contains all three outputs.
    sent = [r for r in sim_requests(simulator) if r["messages"][-1]["content"] == summary["prompt"]]
    assert len(sent) == 1
    # extract_metadata asked for JSON and got a JSON object back.
    assert isinstance(json.loads(results["extract_metadata"]), dict)


def test_data_pipeline(service: Proc, simulator: Proc, client: httpx2.Client) -> None:
    job = run_example(client, "data_pipeline.json")
    assert job["status"] == "completed", job
    assert job["counts"]["completed"] == 12
    results = client.get(f"/jobs/{job['id']}/results").json()["results"]
    cleaner = agent(client, job["id"], "cleaner")
    for i in range(10):
        assert results[f"collector_{i}"] in cleaner["prompt"]
    analyzer = agent(client, job["id"], "analyzer")
    assert results["cleaner"] in analyzer["prompt"]
    assert "<dependency_outputs>" not in analyzer["prompt"]  # it placed the output itself
    # Every agent was called exactly once.
    assert len(sim_requests(simulator)) == 12
    # The collectors ran in parallel: the cleaner started after all of them finished.
    assert cleaner["started_at"] >= max(
        agent(client, job["id"], f"collector_{i}")["finished_at"] for i in range(10)
    )


def test_without_upstream_it_runs_the_simulator_and_says_so(tmp_path: Path) -> None:
    svc = start_service(tmp_path, {"SWARM_SIMULATOR_LATENCY_MS": "5,10"})
    try:
        ready = httpx2.get(f"{svc.url}/readyz").json()
        assert ready["upstream"].startswith("simulator at http://127.0.0.1:")
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=load("doc_analysis.json")).json()["id"]
            assert wait_job(client, job_id)["status"] == "completed"
    finally:
        svc.stop()
    assert "NO UPSTREAM CONFIGURED" in svc.log() and "SIMULATOR" in svc.log()


def test_production_never_falls_back_to_the_simulator(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not become ready"):
        start_service(tmp_path, {"SWARM_ENVIRONMENT": "production"})
